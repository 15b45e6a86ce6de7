"""Decisions ↔ the catalog's identity events, and the event metadata and streams they are appended with."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import orjson

from cdp.eventlog.port import NewEvent, RecordedEvent
from cdp.events import EventMetadata, format_datetime, from_recorded
from cdp.events.envelope import DomainEvent
from cdp.events.identity import IdentifierLinked, MergeRejected, ProfilesMerged, ProfileSplit
from cdp.events.streams import profile_stream
from services.identity.domain.decisions import Decision, Linked, Merged, Rejected, Split

ACTOR = "service:identity"
DECISION_TYPES = ("IdentifierLinked", "ProfilesMerged", "MergeRejected", "ProfileSplit")


def to_event(decision: Decision) -> DomainEvent:
    """The catalog event recording a decision."""
    if isinstance(decision, Linked):
        return IdentifierLinked(
            profile_id=decision.profile,
            identifier_type=decision.type,
            subject_id=decision.subject,
            causing_message_id=decision.cause,
            rule=decision.rule,
            creates_profile=decision.creates,
            seen_at=decision.seen_at,
        )
    if isinstance(decision, Merged):
        return ProfilesMerged(
            profile_id=decision.profile,
            merged_profile_id=decision.merged,
            rule=decision.rule,
            causing_message_id=decision.cause,
            decided_at=decision.at,
        )
    if isinstance(decision, Rejected):
        return MergeRejected(
            profile_id=decision.profile,
            other_profile_id=decision.other,
            rule=decision.rule,
            causing_message_id=decision.cause,
            identifier_type=decision.type,
            subject_id=decision.subject,
            decided_at=decision.at,
            causing_message_position=decision.cause_position,
        )
    return ProfileSplit(
        profile_id=decision.profile,
        new_profile_id=decision.new_profile,
        subject_ids=decision.subjects,
        reason=decision.reason,
        prevent_relink=decision.prevent_relink,
        undone_decision_id=decision.undone,
        decided_at=decision.at,
        automatic=decision.automatic,
    )


def from_event(decision_id: str, event: DomainEvent) -> Decision | None:
    """The decision an identity event records (None for other events)."""
    if isinstance(event, IdentifierLinked):
        return Linked(
            decision_id,
            event.profile_id,
            event.identifier_type,
            event.subject_id,
            event.rule,
            event.creates_profile,
            event.seen_at,
            event.causing_message_id,
        )
    if isinstance(event, ProfilesMerged):
        return Merged(
            decision_id,
            event.profile_id,
            event.merged_profile_id,
            event.rule,
            event.causing_message_id,
            event.decided_at,
        )
    if isinstance(event, MergeRejected):
        return Rejected(
            decision_id,
            event.profile_id,
            event.other_profile_id,
            event.rule,
            event.identifier_type,
            event.subject_id,
            event.causing_message_id,
            event.decided_at,
            event.causing_message_position,
        )
    if isinstance(event, ProfileSplit):
        return Split(
            decision_id,
            event.profile_id,
            event.new_profile_id,
            event.subject_ids,
            event.reason,
            event.prevent_relink,
            event.undone_decision_id,
            event.decided_at,
            event.automatic,
        )
    return None


def stream_of(decision: Decision) -> str:
    """Every decision goes to the stream of the profile it is about (the survivor of a merge)."""
    return profile_stream(decision.profile)


def new_event(decision: Decision, metadata: EventMetadata) -> NewEvent:
    """The decision ready to append, its event id being the (deterministic) decision id."""
    if isinstance(decision, Linked):
        return _linked_event(decision, metadata.to_mapping(IdentifierLinked.version))
    return to_event(decision).to_new_event(metadata, id=uuid.UUID(decision.decision_id))


def new_events(decisions: Iterable[Decision], metadata: EventMetadata) -> list[tuple[str, NewEvent]]:
    """One message's decisions ready to append, each with its stream: `new_event` of each, sharing work."""
    linked: dict[str, str] | None = None
    events: list[tuple[str, NewEvent]] = []
    for decision in decisions:
        if isinstance(decision, Linked):
            if linked is None:
                linked = metadata.to_mapping(IdentifierLinked.version)
            event = _linked_event(decision, linked)
        else:
            event = new_event(decision, metadata)
        events.append((stream_of(decision), event))
    return events


def runs(decided: Iterable[Decision], meta: EventMetadata) -> list[tuple[str, list[NewEvent]]]:
    """One message's decisions as appends: consecutive ones for one stream share a part.

    Parts never span two messages, so a re-run after a crash forms exactly the same parts whatever its batch
    boundaries, and each part is recognised as already stored (idempotency by event id).
    """
    found: list[tuple[str, list[NewEvent]]] = []
    for stream, event in new_events(decided, meta):
        if not found or found[-1][0] != stream:
            found.append((stream, []))
        found[-1][1].append(event)
    return found


def _linked_event(decision: Linked, meta: dict[str, str]) -> NewEvent:
    """`IdentifierLinked` encoded directly: the most frequent decision, on the resolver's hot path.

    The bytes equal `to_event(decision).to_new_event(...)` (a unit test holds them equal): the same orjson
    call on the same keys, in sorted order; the generic encoder introspects the dataclass for every event,
    which costs more than everything else here.
    """
    body = {
        "causing_message_id": decision.cause,
        "creates_profile": decision.creates,
        "identifier_type": decision.type,
        "profile_id": decision.profile,
        "rule": decision.rule,
        "seen_at": format_datetime(decision.seen_at) if decision.seen_at is not None else None,
        "subject_id": decision.subject,
    }
    return NewEvent(
        type=IdentifierLinked.type_name,
        data=orjson.dumps(body),
        metadata=meta,
        id=uuid.UUID(decision.decision_id),
    )


def caused_by(message: RecordedEvent) -> EventMetadata:
    """Metadata of decisions about a message: same correlation, caused by the message's event."""
    return EventMetadata.caused_by(message, ACTOR)


def decode_decision(recorded: RecordedEvent) -> Decision | None:
    """The decision an identity event records; None for other events, without decoding them."""
    if recorded.type not in DECISION_TYPES:
        return None
    return from_event(str(recorded.id), from_recorded(recorded))
