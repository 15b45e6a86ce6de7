"""Governance's read model of data subject requests and suppressions, and the questions asked of it.

Projected from the `dsr-` streams like every read model (rebuildable from the log); it holds pseudonymous ids
only (subject ids, profile ids, request ids). The worker that carries requests out reads each request's own
stream, not this table: the table is for listing, and for finding the requests still open.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, Text, and_, delete, or_, select
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent
from cdp.events import from_recorded, streams
from cdp.events.governance import SubjectSuppressed, SubjectUnsuppressed
from cdp.sqlengine import read_only
from services.governance.convert import micros
from services.governance.domain.requests import Kind, Request, State, advance, from_json, to_json

metadata = MetaData()

requests_table = Table(
    "governance_requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("requested_at", BigInteger, nullable=False, index=True),
    Column("due_at", BigInteger, nullable=False),
    Column("completed_at", BigInteger),
    Column("data", Text, nullable=False),
)

request_subjects = Table(
    "governance_request_subjects",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("request_id", String(64), primary_key=True),
)
"""Which requests cover which subjects (an access export lists the person's earlier requests)."""

suppressions = Table(
    "governance_suppressions",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("request_id", String(64), primary_key=True),
)


class RequestLedger:
    """The projection of request streams into `governance_requests` and `governance_suppressions`."""

    name = "governance-requests"
    metadata = metadata
    filter = EventFilter(categories=(streams.REQUEST,))

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Fold each event into its request's row (inside the reactor's transaction)."""
        for recorded in events:
            event = from_recorded(recorded)
            request_id = recorded.stream.removeprefix(f"{streams.REQUEST}-")
            if isinstance(event, SubjectSuppressed):
                self._suppress(session, event, request_id)
            elif isinstance(event, SubjectUnsuppressed):
                session.execute(delete(suppressions).where(suppressions.c.subject_id.in_(event.subjects())))
            row = session.execute(
                select(requests_table.c.data).where(requests_table.c.request_id == request_id)
            ).scalar_one_or_none()
            before = from_json(json.loads(row)) if row is not None else None
            actor = str(recorded.metadata.get("actor", "")) if recorded.metadata else ""
            after = advance(before, event, actor, recorded.recorded_at)
            if after is None:
                continue
            values = _row(after)
            if row is None:
                session.execute(requests_table.insert().values(values))
                covered = [
                    {"subject_id": s, "request_id": request_id} for s in dict.fromkeys(after.subject_ids)
                ]
                if covered:
                    session.execute(request_subjects.insert(), covered)
            else:
                session.execute(
                    requests_table.update().where(requests_table.c.request_id == request_id).values(values)
                )

    @staticmethod
    def _suppress(session: Session, event: SubjectSuppressed, request_id: str) -> None:
        subjects = list(event.subjects())
        known = set(
            session.scalars(
                select(suppressions.c.subject_id).where(
                    suppressions.c.subject_id.in_(subjects), suppressions.c.request_id == request_id
                )
            )
        )
        rows = [{"subject_id": s, "request_id": request_id} for s in subjects if s not in known]
        if rows:
            session.execute(suppressions.insert(), rows)


def _row(request: Request) -> dict[str, object]:
    return {
        "request_id": request.request_id,
        "kind": request.kind.value,
        "state": request.state.value,
        "requested_at": micros(request.requested_at),
        "due_at": micros(request.due_at),
        "completed_at": micros(request.completed_at) if request.completed_at else None,
        "data": json.dumps(to_json(request)),
    }


@dataclass(frozen=True)
class RequestPage:
    """One page of requests, most recent first, and the token of the next."""

    requests: list[Request]
    next_token: str


class RequestQueries:
    """Reads of the requests table (never writes: the reactor does)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = read_only(engine)

    def get(self, request_id: str) -> Request | None:
        """One request, or None."""
        with self._engine.connect() as connection:
            data = connection.execute(
                select(requests_table.c.data).where(requests_table.c.request_id == request_id)
            ).scalar_one_or_none()
        return None if data is None else from_json(json.loads(data))

    def open_requests(self) -> list[Request]:
        """Access and erasure requests not completed, oldest first (what the worker still has to do)."""
        query = (
            select(requests_table.c.data)
            .where(
                requests_table.c.state != State.COMPLETED.value,
                requests_table.c.kind.in_([Kind.ACCESS.value, Kind.ERASURE.value]),
            )
            .order_by(requests_table.c.requested_at, requests_table.c.request_id)
        )
        with self._engine.connect() as connection:
            return [from_json(json.loads(data)) for data in connection.execute(query).scalars()]

    def page(
        self,
        *,
        kind: Kind | None,
        state: State | None,
        since: datetime | None,
        until: datetime | None,
        overdue_at: datetime | None,
        size: int,
        after: tuple[int, str] | None,
    ) -> RequestPage:
        """Requests matching the filters, most recent first; `overdue_at`: only those overdue at that moment."""
        table = requests_table
        query = select(table.c.data, table.c.requested_at, table.c.request_id)
        if kind is not None:
            query = query.where(table.c.kind == kind.value)
        if state is not None:
            query = query.where(table.c.state == state.value)
        if since is not None:
            query = query.where(table.c.requested_at >= micros(since))
        if until is not None:
            query = query.where(table.c.requested_at < micros(until))
        if overdue_at is not None:
            now = micros(overdue_at)
            query = query.where(
                table.c.kind.in_([Kind.ACCESS.value, Kind.ERASURE.value]),
                or_(
                    and_(table.c.completed_at.is_(None), table.c.due_at < now),
                    table.c.completed_at > table.c.due_at,
                ),
            )
        if after is not None:
            at, request_id = after
            query = query.where(
                or_(
                    table.c.requested_at < at,
                    and_(table.c.requested_at == at, table.c.request_id < request_id),
                )
            )
        query = query.order_by(table.c.requested_at.desc(), table.c.request_id.desc()).limit(size + 1)
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        token = f"{rows[size - 1].requested_at}|{rows[size - 1].request_id}" if len(rows) > size else ""
        return RequestPage([from_json(json.loads(r.data)) for r in rows[:size]], token)

    def covering(self, subjects: Sequence[str]) -> list[Request]:
        """Every request that covers any of these subjects, oldest first."""
        with self._engine.connect() as connection:
            ids = select(request_subjects.c.request_id).where(
                request_subjects.c.subject_id.in_(list(subjects))
            )
            rows = connection.execute(
                select(requests_table.c.data)
                .where(requests_table.c.request_id.in_(ids))
                .order_by(requests_table.c.requested_at, requests_table.c.request_id)
            ).scalars()
            return [from_json(json.loads(data)) for data in rows]

    def suppressing(self, subjects: Sequence[str]) -> dict[str, list[str]]:
        """Subject → the suppression requests in force for it."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(suppressions.c.subject_id, suppressions.c.request_id).where(
                    suppressions.c.subject_id.in_(list(subjects))
                )
            ).all()
        found: dict[str, list[str]] = {}
        for subject, request_id in rows:
            found.setdefault(subject, []).append(request_id)
        return found

    def subjects_of(self, request_ids: Sequence[str]) -> set[str]:
        """Every subject the suppression requests cover (an unsuppression lifts all of them)."""
        with self._engine.connect() as connection:
            return set(
                connection.execute(
                    select(suppressions.c.subject_id).where(suppressions.c.request_id.in_(list(request_ids)))
                ).scalars()
            )


def now() -> datetime:
    """The current moment (UTC)."""
    return datetime.now(UTC)
