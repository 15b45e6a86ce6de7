"""Ingest's own read model: consent and suppression per subject.

Governance owns consent state (docs/governance.md); `ingest_consent` is only ingest's memory of the purposes last
recorded for each subject (by a message or by SetConsent), so that a message restating the same consent does not
append another `ConsentChanged`. It answers no question about consent for anyone else.

Projected from the log like every read model, so it survives restarts and can be rebuilt. Suppressions are few
and checked for every message, so they are also held in memory, reloaded after each commit that changed them.
Deduplication needs no table: a message's event id derives from (source, messageId) and the log refuses to
store an id twice (see `application.message_event_id`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, Text, delete, select
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent
from cdp.events import (
    ConsentChanged,
    SubjectErased,
    SubjectSuppressed,
    SubjectUnsuppressed,
    from_recorded,
)
from cdp.reactor.purge import Purges
from cdp.sqlengine import read_only, rows_deleted

metadata = MetaData()

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

_TYPES = (ConsentChanged, SubjectSuppressed, SubjectUnsuppressed, SubjectErased)


class IngestState:
    """The projection that fills the tables, and the questions the collector asks."""

    name = "ingest-state"
    metadata = metadata
    filter = EventFilter(event_types=tuple(cls.type_name for cls in _TYPES))

    def __init__(
        self,
        engine: Engine,
        on_erased: Callable[[str], None] = lambda subject: None,
        purges: Purges | None = None,
    ) -> None:
        self._engine = read_only(engine)  # queries only: the reactor writes through its own engine
        self._on_erased = on_erased
        """Called with each erased subject (the keyring evicts its cached key)."""
        self._purges = purges
        """Where an erasure's purge is recorded and, once committed, confirmed (`ReadModelPurged`)."""
        self.suppressed: frozenset[str] = frozenset()
        """Every suppressed subject, as of the last committed batch (read in the event loop, no I/O)."""

    def load(self) -> None:
        """Read the suppressed subjects into memory (at start-up, and after a batch changed them)."""
        with self._engine.connect() as connection:
            self.suppressed = frozenset(
                connection.execute(select(suppressed_subjects.c.subject_id)).scalars()
            )

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for a batch of events (inside the runner's transaction)."""
        suppressions_changed = False
        for recorded in events:
            event = from_recorded(recorded)
            suppressions_changed |= isinstance(event, SubjectSuppressed | SubjectUnsuppressed)
            if isinstance(event, ConsentChanged):
                self._merge_consent(session, event)
            elif isinstance(event, SubjectSuppressed) and event.subjects():
                _upsert(
                    session,
                    suppressed_subjects,
                    [{"subject_id": subject, "since": recorded.recorded_at} for subject in event.subjects()],
                )
            elif isinstance(event, SubjectUnsuppressed):
                session.execute(
                    delete(suppressed_subjects).where(suppressed_subjects.c.subject_id.in_(event.subjects()))
                )
            elif isinstance(event, SubjectErased):
                self._erase(session, recorded, event)
        if suppressions_changed:
            # Reload once the batch is committed, so memory never shows what the database may roll back.
            sqlalchemy_event.listen(session, "after_commit", lambda _: self.load(), once=True)

    async def committed(self) -> None:
        """After each committed batch (and at start-up): scrub the files and confirm the purges it recorded."""
        if self._purges is not None:
            await self._purges.confirm()

    def _erase(self, session: Session, recorded: RecordedEvent, event: SubjectErased) -> None:
        """Forget the subject: its consent row (a suppression stays: it is the person's own instruction, and
        governance lifts it), its cached key; recorded to be confirmed once the batch commits."""
        deleted = session.execute(delete(consent_state).where(consent_state.c.subject_id == event.subject_id))
        self._on_erased(event.subject_id)
        if self._purges is not None:
            self._purges.record(session, recorded, event, rows_deleted(deleted))

    def consent_of(self, subject_ids: Iterable[str]) -> dict[str, dict[str, bool]]:
        """The consent last recorded for these subjects (only asked for messages that state consent)."""
        subjects = list(dict.fromkeys(subject_ids))
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(consent_state.c.subject_id, consent_state.c.purposes).where(
                    consent_state.c.subject_id.in_(subjects)
                )
            ).all()
        return {subject: json.loads(purposes) for subject, purposes in rows}

    @staticmethod
    def _merge_consent(session: Session, event: ConsentChanged) -> None:
        current = session.execute(
            select(consent_state.c.purposes).where(consent_state.c.subject_id == event.subject_id)
        ).scalar_one_or_none()
        purposes = {**(json.loads(current) if current else {}), **event.purposes}
        _upsert(session, consent_state, [{"subject_id": event.subject_id, "purposes": json.dumps(purposes)}])


def _upsert(session: Session, table: Table, rows: list[dict[str, object]]) -> None:
    """Insert rows, replacing the non-key columns of those whose key exists."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    keys = [column.name for column in table.primary_key.columns]
    others = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=others), rows)
