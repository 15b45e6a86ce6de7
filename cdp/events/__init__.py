"""The event catalog: every event type every service appends, its envelope, and stream names."""

from __future__ import annotations

from cdp.events import streams
from cdp.events.activation import (
    ConnectionCreated,
    DeliveryFailed,
    DeliverySucceeded,
    DestinationConfigured,
    DestinationDisabled,
)
from cdp.events.envelope import (
    REGISTRY,
    DomainEvent,
    EventCatalogError,
    EventMetadata,
    EventRegistry,
    JsonObject,
    UnknownEventType,
    format_datetime,
    from_recorded,
)
from cdp.events.governance import (
    AccessCompleted,
    AccessRequested,
    ConsentChanged,
    ErasureCompleted,
    ErasureRequested,
    ReadModelPurged,
    RequestStepCompleted,
    RequestStepFailed,
    RetentionPolicySet,
    RetentionRunCompleted,
    SubjectErased,
    SubjectSuppressed,
    SubjectUnsuppressed,
)
from cdp.events.identity import (
    IdentifierLinked,
    IdentityRulesSet,
    MergeRejected,
    MessagesAttributed,
    ProfilesMerged,
    ProfileSplit,
)
from cdp.events.ingest import AttributeDefined, CsvImportCompleted, MessageCollected, TrackingPlanPublished
from cdp.events.platform import EventParked
from cdp.events.segments import AudienceArchived, AudienceDefined, ComputedTraitDefined, MembershipChanged

CATALOG: dict[str, tuple[type[DomainEvent], ...]] = {
    "ingest": (MessageCollected, TrackingPlanPublished, AttributeDefined, CsvImportCompleted),
    "identity": (
        IdentityRulesSet,
        IdentifierLinked,
        ProfilesMerged,
        MergeRejected,
        ProfileSplit,
        MessagesAttributed,
    ),
    "segments": (AudienceDefined, AudienceArchived, ComputedTraitDefined, MembershipChanged),
    "activation": (
        DestinationConfigured,
        DestinationDisabled,
        ConnectionCreated,
        DeliverySucceeded,
        DeliveryFailed,
    ),
    "governance": (
        ConsentChanged,
        SubjectSuppressed,
        SubjectUnsuppressed,
        AccessRequested,
        AccessCompleted,
        ErasureRequested,
        RequestStepCompleted,
        RequestStepFailed,
        SubjectErased,
        ErasureCompleted,
        RetentionPolicySet,
        RetentionRunCompleted,
    ),
    "platform": (EventParked, ReadModelPurged),
}
"""Event classes by the service that owns (appends) them; `platform`: what every service's reactor appends.

`ConsentChanged` is governance's; ingest also appends it, in the commit of the message that stated it."""

__all__ = [
    "CATALOG",
    "REGISTRY",
    "AccessCompleted",
    "AccessRequested",
    "AttributeDefined",
    "AudienceArchived",
    "AudienceDefined",
    "ComputedTraitDefined",
    "ConnectionCreated",
    "ConsentChanged",
    "CsvImportCompleted",
    "DeliveryFailed",
    "DeliverySucceeded",
    "DestinationConfigured",
    "DestinationDisabled",
    "DomainEvent",
    "ErasureCompleted",
    "ErasureRequested",
    "EventCatalogError",
    "EventMetadata",
    "EventParked",
    "EventRegistry",
    "IdentifierLinked",
    "IdentityRulesSet",
    "JsonObject",
    "MembershipChanged",
    "MergeRejected",
    "MessageCollected",
    "MessagesAttributed",
    "ProfileSplit",
    "ProfilesMerged",
    "ReadModelPurged",
    "RequestStepCompleted",
    "RequestStepFailed",
    "RetentionPolicySet",
    "RetentionRunCompleted",
    "SubjectErased",
    "SubjectSuppressed",
    "SubjectUnsuppressed",
    "TrackingPlanPublished",
    "UnknownEventType",
    "format_datetime",
    "from_recorded",
    "streams",
]
