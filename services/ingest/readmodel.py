"""Ingest's own read model: message ids seen per source (dedupe), consent and suppression per subject.

Projected from the log like every read model, so it survives restarts and can be rebuilt; the collector
asks it one question per batch (`lookup`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent
from cdp.events import (
    ConsentChanged,
    MessageCollected,
    SubjectErased,
    SubjectSuppressed,
    SubjectUnsuppressed,
    from_recorded,
)

metadata = MetaData()

seen_messages = Table(
    "ingest_seen_messages",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("message_id", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
)

consent_state = Table(
    "ingest_consent",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("purposes", Text, nullable=False),
)

suppressed_subjects = Table(
    "ingest_suppressed",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False),
)

_TYPES = (MessageCollected, ConsentChanged, SubjectSuppressed, SubjectUnsuppressed, SubjectErased)


@dataclass(frozen=True)
class Lookup:
    """What the collector needs to know about one batch before deciding."""

    seen: frozenset[str]
    consent: dict[str, dict[str, bool]]
    suppressed: frozenset[str]


class IngestState:
    """The projection that fills the tables, and the one query the collector makes."""

    name = "ingest-state"
    metadata = metadata
    filter = EventFilter(event_types=tuple(cls.type_name for cls in _TYPES))

    def __init__(self, engine: Engine, dedupe_window: timedelta = timedelta(days=7)) -> None:
        self._engine = engine
        self.dedupe_window = dedupe_window

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for a batch of events (inside the runner's transaction)."""
        seen_rows = []
        for recorded in events:
            event = from_recorded(recorded)
            if isinstance(event, MessageCollected):
                seen_rows.append(
                    {
                        "source_id": event.source_id,
                        "message_id": event.message_id,
                        "position": recorded.global_position,
                        "received_at": event.received_at,
                    }
                )
            elif isinstance(event, ConsentChanged):
                self._merge_consent(session, event)
            elif isinstance(event, SubjectSuppressed):
                _upsert(
                    session,
                    suppressed_subjects,
                    [{"subject_id": event.subject_id, "since": recorded.recorded_at}],
                )
            elif isinstance(event, SubjectUnsuppressed):
                session.execute(
                    delete(suppressed_subjects).where(suppressed_subjects.c.subject_id == event.subject_id)
                )
            elif isinstance(event, SubjectErased):
                session.execute(delete(consent_state).where(consent_state.c.subject_id == event.subject_id))
        if seen_rows:
            _insert_ignore(session, seen_messages, seen_rows)

    def lookup(self, source_id: str, message_ids: Iterable[str], subject_ids: Iterable[str]) -> Lookup:
        """Which message ids this source sent before, and the consent and suppression of these subjects."""
        ids, subjects = list(dict.fromkeys(message_ids)), list(dict.fromkeys(subject_ids))
        with self._engine.connect() as connection:
            seen = connection.execute(
                select(seen_messages.c.message_id).where(
                    seen_messages.c.source_id == source_id, seen_messages.c.message_id.in_(ids)
                )
            ).scalars()
            consent = connection.execute(
                select(consent_state.c.subject_id, consent_state.c.purposes).where(
                    consent_state.c.subject_id.in_(subjects)
                )
            ).all()
            suppressed = connection.execute(
                select(suppressed_subjects.c.subject_id).where(suppressed_subjects.c.subject_id.in_(subjects))
            ).scalars()
            return Lookup(
                seen=frozenset(seen),
                consent={subject: json.loads(purposes) for subject, purposes in consent},
                suppressed=frozenset(suppressed),
            )

    def forget_older_than(self, now: datetime | None = None) -> int:
        """Drop dedupe entries past the window; returns how many went."""
        cutoff = (now or datetime.now(UTC)) - self.dedupe_window
        with self._engine.begin() as connection:
            return connection.execute(
                delete(seen_messages).where(seen_messages.c.received_at < cutoff)
            ).rowcount

    def seen_pairs(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (source id, message id) pairs are recorded (for tests and diagnostics)."""
        wanted = list(pairs)
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(seen_messages.c.source_id, seen_messages.c.message_id).where(
                    tuple_(seen_messages.c.source_id, seen_messages.c.message_id).in_(wanted)
                )
            ).all()
        return {(source, message) for source, message in rows}

    @staticmethod
    def _merge_consent(session: Session, event: ConsentChanged) -> None:
        current = session.execute(
            select(consent_state.c.purposes).where(consent_state.c.subject_id == event.subject_id)
        ).scalar_one_or_none()
        purposes = {**(json.loads(current) if current else {}), **event.purposes}
        _upsert(session, consent_state, [{"subject_id": event.subject_id, "purposes": json.dumps(purposes)}])


def _insert_ignore(session: Session, table: Table, rows: list[dict[str, object]]) -> None:
    """Insert rows, skipping those whose key exists (a replayed batch, or the same id in two streams)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def _upsert(session: Session, table: Table, rows: list[dict[str, object]]) -> None:
    """Insert rows, replacing the non-key columns of those whose key exists."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    keys = [column.name for column in table.primary_key.columns]
    others = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=others), rows)
