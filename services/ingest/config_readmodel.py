"""Read models of ingest's configuration: the attribute catalog, which plan each source is under, and
tracking-plan violation counts.

Flagged violations are projected from `MessageCollected.plan_violations` and attributed to the plan version the
source was under at that point of the log. Blocked messages are never stored, so their counts come from the
collector's tally in `ingest_blocked_counts`, a counter table outside the projection (a rebuild keeps it).
Counts are kept per hour, the granularity of ListViolations' time range.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    func,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent
from cdp.events import AttributeDefined, MessageCollected, TrackingPlanPublished, from_recorded
from cdp.sqlengine import read_only
from services.ingest.configuration import BlockedKey, attribute_from_event, plan_from_event
from services.ingest.domain.catalog import Attribute, AttributeType, band_from_json
from services.ingest.domain.tracking_plans import TrackingPlan

metadata = MetaData()
counter_metadata = MetaData()

attributes = Table(
    "ingest_attributes",
    metadata,
    Column("attribute_id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
)

plan_sources = Table(
    "ingest_plan_sources",
    metadata,
    Column("source_id", String(64), primary_key=True),
    Column("plan_id", String(64), nullable=False),
    Column("plan_version", BigInteger, nullable=False),
)


def _count_columns() -> list[Column[Any]]:
    return [
        Column("source_id", String(64), primary_key=True),
        Column("plan_id", String(64), primary_key=True),
        Column("plan_version", BigInteger, primary_key=True),
        Column("message_type", String(16), primary_key=True),
        Column("event", String(512), primary_key=True),
        Column("reason", String(32), primary_key=True),
        Column("field", String(512), primary_key=True),
        Column("hour", DateTime(timezone=True), primary_key=True),
        Column("count", BigInteger, nullable=False),
        Column("first_seen", DateTime(timezone=True), nullable=False),
        Column("last_seen", DateTime(timezone=True), nullable=False),
    ]


flagged_counts = Table("ingest_flagged_counts", metadata, *_count_columns())
blocked_counts = Table("ingest_blocked_counts", counter_metadata, *_count_columns())

_KEY = ("source_id", "plan_id", "plan_version", "message_type", "event", "reason", "field", "hour")
_TYPES = (TrackingPlanPublished, AttributeDefined, MessageCollected)
DEFAULT_PAGE = 50
MAX_PAGE = 1000


@dataclass(frozen=True)
class ViolationFilter:
    """What ListViolations asks for; empty strings and None mean no restriction."""

    plan_id: str = ""
    source_id: str = ""
    event: str = ""
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class ViolationCount:
    """One group of violations."""

    source_id: str
    plan_id: str
    plan_version: int
    message_type: str
    event: str
    reason: str
    field: str
    count: int
    blocked_count: int
    first_seen: datetime
    last_seen: datetime


class ConfigView:
    """The projection (catalog, source → plan, flagged counts) and the queries behind the admin RPCs."""

    name = "ingest-config"
    metadata = metadata
    filter = EventFilter(event_types=tuple(cls.type_name for cls in _TYPES))

    def __init__(self, engine: Engine, on_plan: Callable[[TrackingPlan], object] = lambda plan: None) -> None:
        self._engine = engine
        self._reader = read_only(engine)
        self._on_plan = on_plan
        counter_metadata.create_all(engine)

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for a batch of events (inside the runner's transaction)."""
        flagged: dict[tuple[Any, ...], list[Any]] = {}
        for recorded in events:
            event = from_recorded(recorded)
            if isinstance(event, MessageCollected):
                if event.plan_violations:
                    self._flagged(session, event, flagged)
            elif isinstance(event, TrackingPlanPublished):
                self._plan(session, event, recorded)
            elif isinstance(event, AttributeDefined) and event.attribute_id:
                _attribute(session, event, recorded.recorded_at)
        add_counts(session, flagged_counts, flagged)

    def _plan(self, session: Session, event: TrackingPlanPublished, recorded: RecordedEvent) -> None:
        session.execute(delete(plan_sources).where(plan_sources.c.plan_id == event.plan_id))
        session.execute(delete(plan_sources).where(plan_sources.c.source_id.in_(event.source_ids)))
        if event.source_ids:
            session.execute(
                plan_sources.insert(),
                [
                    {"source_id": s, "plan_id": event.plan_id, "plan_version": event.plan_version}
                    for s in event.source_ids
                ],
            )
        # Other replicas' publications reach this process's plan book here (install only moves forward).
        self._on_plan(plan_from_event(recorded))

    def _flagged(
        self, session: Session, event: MessageCollected, into: dict[tuple[Any, ...], list[Any]]
    ) -> None:
        plan = session.execute(
            select(plan_sources.c.plan_id, plan_sources.c.plan_version).where(
                plan_sources.c.source_id == event.source_id
            )
        ).first()
        name = event.event_name or ""
        if not name and event.message_type in ("page", "screen"):
            name = ""  # page and screen names are inside the encrypted payload; counted under ""
        hour = event.received_at.replace(minute=0, second=0, microsecond=0)
        for encoded in event.plan_violations:
            reason, _, field = encoded.partition(":")
            key = (
                event.source_id,
                plan[0] if plan else "",
                plan[1] if plan else 0,
                event.message_type,
                name,
                reason,
                field,
                hour,
            )
            _merge(into, key, 1, event.received_at, event.received_at)

    def add_blocked(self, drained: Sequence[tuple[BlockedKey, int, datetime, datetime]]) -> None:
        """Add the collector's blocked tally to the counter table."""
        rows: dict[tuple[Any, ...], list[Any]] = {}
        for key, count, first, last in drained:
            _merge(rows, tuple(getattr(key, name) for name in _KEY), count, first, last)
        with Session(self._engine) as session, session.begin():
            add_counts(session, blocked_counts, rows)

    def attributes(self, page_size: int, after: str) -> tuple[list[Attribute], str]:
        """A page of the catalog ordered by id, and the token of the next page ('' at the end)."""
        size = _page_size(page_size)
        with self._reader.connect() as connection:
            rows = connection.execute(
                select(attributes.c.attribute_id, attributes.c.body)
                .where(attributes.c.attribute_id > after)
                .order_by(attributes.c.attribute_id)
                .limit(size + 1)
            ).all()
        found = [_attribute_from_row(body) for _, body in rows[:size]]
        return found, (rows[size - 1][0] if len(rows) > size else "")

    def violations(
        self, wanted: ViolationFilter, page_size: int, offset: int
    ) -> tuple[list[ViolationCount], bool]:
        """A page of grouped counts ordered by count (descending); True if more pages follow."""
        size = _page_size(page_size)
        query = _violations_query(wanted).offset(offset).limit(size + 1)
        with self._reader.connect() as connection:
            rows = connection.execute(query).all()
        counts = [_count_from(row._mapping) for row in rows[:size]]
        return counts, len(rows) > size


def _count_from(row: Any) -> ViolationCount:
    """A result row as a count; SQLite hands datetimes back naive (they were stored in UTC)."""
    return ViolationCount(
        source_id=row["source_id"],
        plan_id=row["plan_id"],
        plan_version=int(row["plan_version"]),
        message_type=row["message_type"],
        event=row["event"],
        reason=row["reason"],
        field=row["field"],
        count=int(row["count"]),
        blocked_count=int(row["blocked"]),
        first_seen=_utc(row["first_seen"]),
        last_seen=_utc(row["last_seen"]),
    )


def _utc(value: Any) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _violations_query(wanted: ViolationFilter) -> Any:
    """Flagged and blocked counts together, grouped by (source, plan, type, event, reason, field)."""
    parts = []
    for table, blocked in ((flagged_counts, False), (blocked_counts, True)):
        c = table.c
        part = select(
            c.source_id,
            c.plan_id,
            c.plan_version,
            c.message_type,
            c.event,
            c.reason,
            c.field,
            c.count,
            (c.count if blocked else literal(0, BigInteger)).label("blocked"),
            c.first_seen,
            c.last_seen,
        )
        for column, value in (
            ("plan_id", wanted.plan_id),
            ("source_id", wanted.source_id),
            ("event", wanted.event),
        ):
            if value:
                part = part.where(c[column] == value)
        if wanted.start is not None:
            part = part.where(c.hour >= wanted.start.replace(minute=0, second=0, microsecond=0))
        if wanted.end is not None:
            part = part.where(c.hour < wanted.end)
        parts.append(part)
    both = union_all(*parts).subquery()
    group = (both.c.source_id, both.c.plan_id, both.c.message_type, both.c.event, both.c.reason, both.c.field)
    total = func.sum(both.c.count)
    return (
        select(
            *group,
            func.max(both.c.plan_version).label("plan_version"),
            total.label("count"),
            func.sum(both.c.blocked).label("blocked"),
            func.min(both.c.first_seen).label("first_seen"),
            func.max(both.c.last_seen).label("last_seen"),
        )
        .group_by(*group)
        .order_by(total.desc(), *group)
    )


def _merge(
    into: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], count: int, first: datetime, last: datetime
) -> None:
    entry = into.get(key)
    if entry is None:
        into[key] = [count, first, last]
    else:
        entry[0] += count
        entry[1], entry[2] = min(entry[1], first), max(entry[2], last)


def add_counts(session: Session, table: Table, rows: dict[tuple[Any, ...], list[Any]]) -> None:
    """Add counts to existing rows or insert new ones (portable: select then update or insert)."""
    for key, (count, first, last) in rows.items():
        where = [table.c[name] == value for name, value in zip(_KEY, key, strict=True)]
        current = session.execute(
            select(table.c.count, table.c.first_seen, table.c.last_seen).where(*where)
        ).first()
        if current is None:
            session.execute(
                table.insert().values(
                    **dict(zip(_KEY, key, strict=True)), count=count, first_seen=first, last_seen=last
                )
            )
            continue
        session.execute(
            update(table)
            .where(*where)
            .values(
                count=table.c.count + count,
                first_seen=min(_aware(current.first_seen, first), first),
                last_seen=max(_aware(current.last_seen, last), last),
            )
        )


def _aware(stored: datetime, like: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return stored.replace(tzinfo=like.tzinfo) if stored.tzinfo is None else stored


def _attribute(session: Session, event: AttributeDefined, recorded_at: datetime) -> None:
    attribute = attribute_from_event(event, recorded_at)
    body = json.dumps(
        {
            "attribute_id": attribute.attribute_id,
            "attribute": attribute.attribute,
            "type": attribute.type.value,
            "description": attribute.description,
            "bands": [dict(b) for b in event.bands],
            "personal_data": attribute.personal_data,
            "version": attribute.version,
            "updated_at": attribute.updated_at.isoformat() if attribute.updated_at else None,
        }
    )
    session.execute(delete(attributes).where(attributes.c.attribute_id == attribute.attribute_id))
    session.execute(attributes.insert().values(attribute_id=attribute.attribute_id, body=body))


def _attribute_from_row(body: str) -> Attribute:
    data = json.loads(body)
    return Attribute(
        attribute_id=data["attribute_id"],
        attribute=data["attribute"],
        type=AttributeType(data["type"]),
        description=data["description"],
        bands=tuple(band_from_json(b) for b in data["bands"]),
        personal_data=data["personal_data"],
        version=data["version"],
        updated_at=datetime.fromisoformat(data["updated_at"]) if data["updated_at"] else None,
    )


def _page_size(requested: int) -> int:
    return DEFAULT_PAGE if requested <= 0 else min(requested, MAX_PAGE)
