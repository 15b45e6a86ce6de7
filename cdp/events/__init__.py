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
    AccessRequested,
    ConsentChanged,
    ErasureRequested,
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
        ErasureRequested,
        SubjectErased,
        RetentionPolicySet,
        RetentionRunCompleted,
    ),
    "platform": (EventParked,),
}
"""Event classes by the service that owns (appends) them; `platform`: what every service's reactor appends."""

__all__ = [
    "CATALOG",
    "REGISTRY",
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
