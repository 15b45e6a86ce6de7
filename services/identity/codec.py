"""Decisions ↔ the catalog's identity events, and the event metadata and streams they are appended with."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from cdp.eventlog.port import NewEvent, RecordedEvent
from cdp.events import EventMetadata, format_datetime, from_recorded
from cdp.events.envelope import DomainEvent
from cdp.events.identity import IdentifierLinked, MergeRejected, ProfilesMerged, ProfileSplit
from cdp.events.ingest import MessageCollected
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


_LONG_NUMBER = re.compile(rb"\d{19}")
"""orjson turns integers beyond 64 bits into floats; such bodies take the catalog's decoder (as it does)."""


def decode(recorded: RecordedEvent) -> DomainEvent:
    """The event a recorded event holds; a current `MessageCollected` is decoded directly.

    It equals `from_recorded` (a unit test holds them equal): the catalog's generic decoder resolves type
    hints field by field for each of the resolver's messages, which costs more than opening the payload.
    Anything unusual (older schema, long numbers, a body that does not fit) takes the catalog's path.
    """
    if recorded.type != MessageCollected.type_name:
        return from_recorded(recorded)
    message = decode_message(recorded.data, recorded.metadata.get("schema_version", "1"))
    return from_recorded(recorded) if message is None else message  # the catalog raises its error


def decode_decision(recorded: RecordedEvent) -> Decision | None:
    """The decision an identity event records (None for other events), its event decoded directly.

    It equals `from_event(id, from_recorded(recorded))` (a unit test holds them equal); replays decode every
    decision of the log, where the catalog's generic decoder (type hints resolved field by field) costs most of
    the time. Anything unusual (older schema, long numbers, a body that does not fit) takes the catalog's path.
    """
    event_class = _DECISION_EVENTS.get(recorded.type)
    if event_class is None:
        return None
    decision_id = str(recorded.id)
    current = recorded.metadata.get("schema_version", "1") == str(event_class.version)
    if current and not _LONG_NUMBER.search(recorded.data):
        try:
            return from_event(decision_id, event_class(**_decision_fields(orjson.loads(recorded.data))))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            pass
    return from_event(decision_id, from_recorded(recorded))


_DECISION_EVENTS: dict[str, type[DomainEvent]] = {
    cls.type_name: cls for cls in (IdentifierLinked, ProfilesMerged, MergeRejected, ProfileSplit)
}
"""The current version of each decision event; an older one (to upcast) takes the catalog's path."""
_DECISION_MOMENTS = frozenset({"seen_at", "decided_at"})


def _decision_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A decision event's body as its fields: moments parsed, the split's subjects a tuple; absent fields
    take the class's defaults and unknown ones fail (TypeError), as with the catalog."""
    fields = {k: _moment(v) if k in _DECISION_MOMENTS else v for k, v in body.items()}
    if "subject_ids" in fields:
        if not isinstance(fields["subject_ids"], list):
            raise TypeError("subject_ids is not a list")
        fields["subject_ids"] = tuple(fields["subject_ids"])
    return fields


def decode_message(data: bytes, schema_version: str) -> MessageCollected | None:
    """A `MessageCollected` body decoded directly; None when it is unusual (for the catalog's decoder)."""
    if _LONG_NUMBER.search(data) or int(schema_version) != MessageCollected.version:
        return None
    try:
        return _message(orjson.loads(data))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _message(body: dict[str, Any]) -> MessageCollected:
    # Absent fields take the class's defaults, present ones are taken as they are: as the catalog does.
    optional: dict[str, Any] = {}
    if "event_name" in body:
        optional["event_name"] = body["event_name"]
    if "sent_at" in body:
        optional["sent_at"] = _moment(body["sent_at"])
    if "plan_violations" in body:
        violations = body["plan_violations"]
        optional["plan_violations"] = None if violations is None else tuple(violations)
    return MessageCollected(
        message_id=body["message_id"],
        message_type=body["message_type"],
        source_id=body["source_id"],
        subject_id=body["subject_id"],
        timestamp=_moment(body["timestamp"]),
        received_at=_moment(body["received_at"]),
        identifiers=body["identifiers"],
        payload=body["payload"],
        **optional,
    )


def _moment(text: str | None) -> Any:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)
