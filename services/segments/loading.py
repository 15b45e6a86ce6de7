"""Writing profiles' facts into the read model's tables in bulk, and the same facts as the Python evaluator sees
them: what tests, benchmarks and projections share.

A `ProfileRecord` is one profile's facts as JSON (traits, events with their properties, computed values, consent,
identifiers); `insert_profiles` writes many with one executemany per table, `facts` gives the
`evaluate.ProfileFacts` the incremental evaluator reads of the same record. `leaf_rows` turns a document's
leaves (`values.flatten`) into rows of a leaf table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, delete, insert

from services.segments import tables as t
from services.segments.domain.evaluate import EventFact, ProfileFacts
from services.segments.domain.values import Doc, Leaf, flatten

FACT_TABLES: tuple[Table, ...] = (
    t.profiles,
    t.subjects,
    t.events,
    t.event_leaves,
    t.trait_leaves,
    t.computed,
    t.computed_leaves,
    t.profile_consent,
)
"""The tables conditions read (what `clear` empties)."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One collected message as the read model keeps it."""

    position: int
    time: int
    message_type: str = "track"
    name: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    subject_id: str = "subject"
    event_id: str | None = None
    """Default: `event-{position}`."""


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    """One profile's facts as JSON."""

    profile_id: str
    traits: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[EventRecord] = ()
    computed: Mapping[str, Any] = field(default_factory=dict)
    """Computed trait id → its value (None: no value, as `facts.write_computed` stores it)."""
    consent: Mapping[str, bool] = field(default_factory=dict)
    """Purpose → the latest decision."""
    identifiers: Mapping[str, str] = field(default_factory=dict)
    """Subject id → identifier type."""


def leaf_rows(leaves: Iterable[Leaf], **owner: Any) -> list[dict[str, Any]]:
    """Rows of a leaf table (`segments_*_leaves`) for a document's leaves, each with the owner's columns
    (`profile_id=…`, `position=…`, `profile_id=…, trait_id=…`)."""
    return [
        {
            **owner,
            "path": leaf.path,
            "kind": leaf.kind,
            "num": leaf.num,
            "text": leaf.text,
            "key": leaf.key,
            "time": leaf.time,
            "item": leaf.item,
        }
        for leaf in leaves
    ]


def facts(record: ProfileRecord) -> ProfileFacts:
    """What the Python evaluator sees of the record (events in (time, position) order)."""
    return ProfileFacts(
        profile_id=record.profile_id,
        traits=Doc.of(dict(record.traits)),
        events=[
            EventFact(e.position, e.time, e.message_type, e.name, Doc.of(dict(e.properties)))
            for e in sorted(record.events, key=lambda e: (e.time, e.position))
        ],
        computed={
            trait_id: Doc.of(value) for trait_id, value in record.computed.items() if value is not None
        },
        consent=dict(record.consent),
        identifier_types=frozenset(record.identifiers.values()),
    )


def insert_profiles(connection: Connection, records: Iterable[ProfileRecord], update_time: int = 0) -> None:
    """Insert the records' rows into every fact table (one executemany per table; the profiles must be new)."""
    rows: dict[Table, list[dict[str, Any]]] = {table: [] for table in FACT_TABLES}
    for record in records:
        owner = record.profile_id
        rows[t.profiles].append(
            {"profile_id": owner, "traits": dict(record.traits), "update_time": update_time}
        )
        rows[t.trait_leaves].extend(leaf_rows(flatten(dict(record.traits)), profile_id=owner))
        event_rows(record.events, owner, rows)
        for trait_id, value in record.computed.items():
            if value is None:
                continue
            rows[t.computed].append(
                {"profile_id": owner, "trait_id": trait_id, "value": value, "update_time": update_time}
            )
            rows[t.computed_leaves].extend(leaf_rows(flatten(value), profile_id=owner, trait_id=trait_id))
        rows[t.profile_consent].extend(
            {"profile_id": owner, "purpose": purpose, "granted": granted}
            for purpose, granted in record.consent.items()
        )
        rows[t.subjects].extend(
            {"subject_id": subject_id, "profile_id": owner, "identifier_type": identifier_type}
            for subject_id, identifier_type in record.identifiers.items()
        )
    _insert(connection, rows)


def insert_events(
    connection: Connection, records: Iterable[EventRecord], profile_id: str | None = None
) -> None:
    """Insert events (and their leaves) of one profile, or unattributed ones (`profile_id` None)."""
    rows: dict[Table, list[dict[str, Any]]] = {t.events: [], t.event_leaves: []}
    event_rows(records, profile_id, rows)
    _insert(connection, rows)


def event_rows(
    records: Iterable[EventRecord], profile_id: str | None, into: dict[Table, list[dict[str, Any]]]
) -> None:
    """Append the rows of `segments_events` and `segments_event_leaves` for these events to `into`."""
    for event in records:
        properties = dict(event.properties)
        into[t.events].append(
            {
                "position": event.position,
                "event_id": event.event_id or f"event-{event.position}",
                "subject_id": event.subject_id,
                "profile_id": profile_id,
                "message_type": event.message_type,
                "name": event.name,
                "time": event.time,
                "properties": properties,
                "traits": None,
            }
        )
        into[t.event_leaves].extend(leaf_rows(flatten(properties), position=event.position))


def clear(connection: Connection) -> None:
    """Delete every row of the fact tables."""
    for table in FACT_TABLES:
        connection.execute(delete(table))


def _insert(connection: Connection, rows: Mapping[Table, list[dict[str, Any]]]) -> None:
    for table, batch in rows.items():
        if batch:
            connection.execute(insert(table), batch)
