"""Confirming an erasure, crash-safe: a purge is recorded with the rows it deleted, confirmed once committed.

A service that holds data about people reacts to `SubjectErased` by deleting the subject's rows (and those of
the person's profiles) in its reactor's transaction, and records a pending purge in the same transaction
(`Purges.record`). Once the reactor committed, its `committed` hook calls `Purges.confirm`: the database files
are scrubbed (`cdp.sqlengine.scrub`: SQLite's WAL folded in and truncated, PostgreSQL's tables vacuumed), a
`ReadModelPurged` is appended to the request's stream with an id derived from the `SubjectErased` (a re-run
appends it once), and the pending rows go. A crash anywhere in between leaves the rows: the policy's `load`
(start-up, or after a failed batch) confirms them. Governance deletes the person's events only after every
service confirmed, so the log can replay nothing of them into a read model that is still being scrubbed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cdp import errors
from cdp.eventlog.port import EventStore, RecordedEvent, StreamAppend, append_all
from cdp.events import EventMetadata
from cdp.events.governance import ReadModelPurged, SubjectErased
from cdp.events.streams import request_stream
from cdp.faults import describe, is_transient
from cdp.reactor.policy import derived_id
from cdp.sqlengine import create_tables, scrub

log = structlog.get_logger(__name__)

purge_metadata = MetaData()
pending_purges = Table(
    "purges_pending",
    purge_metadata,
    Column("reactor", String(200), primary_key=True),
    Column("event_id", String(36), primary_key=True),  # the SubjectErased this purge reacted to
    Column("request_id", String(128), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("correlation_id", String(200), nullable=False),
    Column("rows_deleted", Integer, nullable=False),
)
"""Purges committed but not confirmed yet, one row per reactor and `SubjectErased` (no personal data)."""


def purged_event_id(erased_event_id: uuid.UUID | str, service: str) -> uuid.UUID:
    """The id of `service`'s `ReadModelPurged` for one `SubjectErased` (the same on every re-run)."""
    return derived_id(erased_event_id, "purged", service)


class Purges:
    """One reactor's pending purges in its read model's database, and their confirmation."""

    def __init__(
        self, service: str, reactor: str, store: EventStore, engine: Engine, tables: Iterable[Table | str]
    ) -> None:
        self.service, self.reactor = service, reactor
        self._store = store
        self._engine = engine.execution_options(sqlite_immediate=True)
        self._tables = tuple(tables)
        """What `scrub` vacuums on PostgreSQL: every table the purges delete from."""
        self._due = True
        """Some purge may be pending (at start: a crash may have left one); cleared when none is."""
        self._ready = False

    def ensure_table(self) -> None:
        """Create the pending table if missing (sync: from a worker thread)."""
        if not self._ready:
            create_tables(purge_metadata, self._engine)
            self._ready = True

    def record(
        self, session: Session, recorded: RecordedEvent, event: SubjectErased, rows_deleted: int
    ) -> None:
        """In the purge's own transaction: remember to confirm it once committed."""
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        row = {
            "reactor": self.reactor,
            "event_id": str(recorded.id),
            "request_id": event.request_id,
            "subject_id": event.subject_id,
            "correlation_id": recorded.metadata.get("correlation_id") or str(recorded.id),
            "rows_deleted": rows_deleted,
        }
        session.execute(dialect.insert(pending_purges).values(row).on_conflict_do_nothing())
        self._due = True

    async def confirm(self) -> int:
        """Scrub the files and confirm every committed purge; how many were confirmed (0, cheaply, if none is
        pending). A scrub that cannot finish (readers holding the SQLite WAL) is raised as an outage, which the
        reactor retries with backoff (its reload runs `load`, which confirms); any other failure leaves them
        pending for the next call, logged as `read_model_purge_unconfirmed`."""
        if not self._due:
            return 0
        try:
            return await self._confirm()
        except Exception as error:
            if is_transient(error):
                raise
            log.error("read_model_purge_unconfirmed", service=self.service, error=describe(error))
            return 0

    async def _confirm(self) -> int:
        pending = await asyncio.to_thread(self._pending)
        if not pending:
            self._due = False
            return 0
        if not await asyncio.to_thread(scrub, self._engine, self._tables):
            # Logged by scrub. An outage to the reactor: it backs off, reloads, and `load` tries again.
            raise errors.Unavailable("the read model's WAL could not be emptied (readers on old snapshots)")
        now = datetime.now(UTC)
        appends = [self._confirmation(row, now) for row in pending]
        await append_all(self._store, appends)
        await asyncio.to_thread(self._forget, [row["event_id"] for row in pending])
        self._due = False
        # The pending rows name the erased subjects (opaque ids, but still theirs): scrubbed away too.
        await asyncio.to_thread(scrub, self._engine, [pending_purges])
        for row in pending:
            log.info(
                "read_model_purged",
                service=self.service,
                reactor=self.reactor,
                request_id=row["request_id"],
                subject_id=row["subject_id"],
                rows_deleted=row["rows_deleted"],
            )
        return len(pending)

    def _confirmation(self, row: dict[str, Any], now: datetime) -> StreamAppend:
        event = ReadModelPurged(
            request_id=row["request_id"],
            service=self.service,
            subject_id=row["subject_id"],
            rows_deleted=row["rows_deleted"],
            purged_at=now,
        )
        metadata = EventMetadata(
            actor=f"service:{self.service}",
            correlation_id=row["correlation_id"],
            causation_id=row["event_id"],
        )
        new = event.to_new_event(metadata, id=purged_event_id(row["event_id"], self.service))
        return StreamAppend(request_stream(row["request_id"]), [new])

    def _pending(self) -> list[dict[str, Any]]:
        self.ensure_table()
        query = select(pending_purges).where(pending_purges.c.reactor == self.reactor)
        with self._engine.connect() as connection:
            rows = connection.execute(query.order_by(pending_purges.c.event_id)).mappings().all()
        return [dict(row) for row in rows]

    def _forget(self, event_ids: Sequence[str]) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                delete(pending_purges).where(
                    pending_purges.c.reactor == self.reactor, pending_purges.c.event_id.in_(event_ids)
                )
            )
