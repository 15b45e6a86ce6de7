"""Ingest's configuration use cases: tracking plans, the attribute catalog, and CSV imports.

Plans and attributes are event-sourced: the write side reads the entity's own stream (`trackingplan-<id>`,
`config-ingest`), decides, and appends with the version it read, so concurrent writers cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from cdp.errors import Conflict, InvalidInput, NotFound
from cdp.eventlog.port import EventFilter, EventStore, ExpectedVersion, WrongExpectedVersion
from cdp.events import (
    AttributeDefined,
    CsvImportCompleted,
    EventMetadata,
    TrackingPlanPublished,
    from_recorded,
    streams,
)
from services.ingest.application import Collector
from services.ingest.domain.catalog import (
    Attribute,
    AttributeType,
    band_from_json,
    band_to_json,
    validate_attribute,
)
from services.ingest.domain.csv_import import (
    BadRow,
    CsvParser,
    ImportReport,
    ImportSpec,
    Record,
    RowMapper,
    validate_spec,
)
from services.ingest.domain.messages import InvalidMessage, Message, parse_message
from services.ingest.domain.outcomes import Outcome, Status
from services.ingest.domain.plans import PlanDecision, Verdict
from services.ingest.domain.tracking_plans import PlanBook, TrackingPlan, validate_plan

log = structlog.get_logger(__name__)

MAX_CHUNK_BYTES = 1024 * 1024
CSV_BATCH = 500
PROGRESS_EVERY = 100_000
_IMPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_WRITE_RETRIES = 3


@dataclass(frozen=True)
class BlockedKey:
    """What a blocked violation is counted by (no values, so no personal data)."""

    source_id: str
    plan_id: str
    plan_version: int
    message_type: str
    event: str
    reason: str
    field: str
    hour: datetime


Drained = tuple[BlockedKey, int, datetime, datetime]
"""A blocked violation's tally: its key, count, first and last seen."""


class PlanEnforcer:
    """The collector's `PlanCheck`: the in-memory plan book, plus a tally of blocked violations.

    Blocked messages are never stored, so their violations cannot be projected from the log; the tally is
    drained into a counter table by a background task (see docs/tracking-plans.md).
    """

    def __init__(self, book: PlanBook, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.book = book
        self._clock = clock
        self._blocked: Counter[BlockedKey] = Counter()
        self._seen: dict[BlockedKey, tuple[datetime, datetime]] = {}

    def check(self, source_id: str, message: Message) -> PlanDecision:
        """The book's decision; a BLOCK is tallied."""
        decision = self.book.check(source_id, message)
        if decision.verdict is Verdict.BLOCK:
            self._tally(source_id, decision)
        return decision

    def _tally(self, source_id: str, decision: PlanDecision) -> None:
        plan = self.book.plan_of(source_id)
        message, now = decision.message, self._clock()
        # Only track event names are kept: flagged page/screen names sit in the encrypted payload, so both count "".
        event = (message.event if message.type == "track" else None) or ""
        hour = now.replace(minute=0, second=0, microsecond=0)
        for violation in decision.violations:
            key = BlockedKey(
                source_id,
                plan.plan_id if plan else "",
                plan.version if plan else 0,
                message.type,
                event,
                violation.reason.value,
                violation.field,
                hour,
            )
            self._blocked[key] += 1
            first, _ = self._seen.get(key, (now, now))
            self._seen[key] = (first, now)

    def drain(self) -> list[Drained]:
        """Take the tally so far (key, count, first seen, last seen) and start a new one."""
        blocked, seen = self._blocked, self._seen
        self._blocked, self._seen = Counter(), {}
        return [(key, count, *seen[key]) for key, count in blocked.items()]

    def restore(self, drained: Sequence[Drained]) -> None:
        """Put back a drained tally that could not be written (it is tried again with the next one)."""
        for key, count, first, last in drained:
            self._blocked[key] += count
            earlier, later = self._seen.get(key, (first, last))
            self._seen[key] = (min(earlier, first), max(later, last))


class TrackingPlans:
    """Publish and read tracking plans; publishing also installs the plan in this process's book at once."""

    def __init__(
        self, store: EventStore, book: PlanBook, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._store = store
        self._book = book
        self._clock = clock

    async def publish(
        self, plan: TrackingPlan, *, expected_version: int | None, validate_only: bool, actor: str
    ) -> TrackingPlan:
        """Validate, check the expected version, append version N+1 (unless validate_only) and return it."""
        others = {s: p for s, p in self._book.sources().items() if p != plan.plan_id}
        validate_plan(plan, others)
        current = await self.latest(plan.plan_id)
        version = current.version if current else 0
        if expected_version is not None and expected_version != version:
            raise Conflict(f"plan {plan.plan_id!r} is at version {version}, not {expected_version}")
        published = replace(plan, version=version + 1, published_at=self._clock(), published_by=actor)
        if validate_only:
            return published
        event = TrackingPlanPublished(
            plan_id=plan.plan_id,
            plan_version=published.version,
            source_ids=tuple(s.source_id for s in plan.sources),
            rules=plan.to_json(),
            published_at=published.published_at,
        )
        expected = ExpectedVersion.NO_STREAM if version == 0 else version - 1
        try:
            await self._store.append(
                streams.tracking_plan_stream(plan.plan_id),
                [event.to_new_event(EventMetadata(actor=actor))],
                expected,
            )
        except WrongExpectedVersion:
            raise Conflict(f"plan {plan.plan_id!r} was published concurrently; read it and retry") from None
        self._book.install(published)
        log.info("tracking_plan_published", plan_id=plan.plan_id, version=published.version)
        return published

    async def get(self, plan_id: str, version: int | None = None) -> TrackingPlan:
        """The latest or a given version; NotFound otherwise."""
        plan = await self.latest(plan_id) if version is None else await self._version(plan_id, version)
        if plan is None:
            which = "" if version is None else f" version {version}"
            raise NotFound(f"tracking plan {plan_id!r}{which} does not exist")
        return plan

    async def latest(self, plan_id: str) -> TrackingPlan | None:
        """The latest version, read from the plan's stream (strongly consistent, unlike a read model)."""
        stream = _plan_stream(plan_id)
        events = await self._store.read_stream(stream, backwards=True, limit=1) if stream else []
        return plan_from_event(events[0]) if events else None

    async def _version(self, plan_id: str, version: int) -> TrackingPlan | None:
        stream = _plan_stream(plan_id)
        if stream is None or version < 1:
            return None
        events = await self._store.read_stream(stream, version - 1, limit=1)
        return plan_from_event(events[0]) if events else None

    async def load_into_book(self) -> int:
        """Install every plan's latest version from the log (start-up); returns how many plans."""
        recorded = await self._store.read_all(
            filter=EventFilter(event_types=(TrackingPlanPublished.type_name,))
        )
        for item in recorded:
            self._book.install(plan_from_event(item))
        return len({item.stream for item in recorded})


def _plan_stream(plan_id: str) -> str | None:
    try:
        return streams.tracking_plan_stream(plan_id)
    except ValueError:
        return None


def plan_from_event(recorded: Any) -> TrackingPlan:
    """A recorded TrackingPlanPublished as a plan version."""
    event = from_recorded(recorded)
    assert isinstance(event, TrackingPlanPublished)
    return TrackingPlan.from_json(
        event.plan_id,
        event.rules,
        version=event.plan_version,
        published_at=event.published_at or recorded.recorded_at,
        published_by=recorded.metadata.get("actor", ""),
    )


class AttributeCatalog:
    """Define attributes (event-sourced on `config-ingest`) and load the catalog for imports."""

    def __init__(self, store: EventStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._clock = clock

    async def define(
        self, attribute: Attribute, *, expected_version: int | None, actor: str
    ) -> tuple[Attribute, bool]:
        """Create or replace an attribute; returns it with its new version, and whether it is new."""
        validate_attribute(attribute)
        for _ in range(_WRITE_RETRIES):
            known, position = await self._load()
            current = known.get(attribute.attribute_id)
            version = current.version if current else 0
            if expected_version is not None and expected_version != version:
                raise Conflict(
                    f"attribute {attribute.attribute_id!r} is at version {version}, not {expected_version}"
                )
            _check_trait_key_free(attribute, known)
            defined = replace(attribute, version=version + 1, updated_at=self._clock())
            expected = ExpectedVersion.NO_STREAM if position is None else position
            try:
                await self._store.append(
                    streams.config_stream("ingest"), [_attribute_event(defined, actor)], expected
                )
            except WrongExpectedVersion:
                continue  # another definition landed in between: re-read and decide again
            return defined, current is None
        raise Conflict("the attribute catalog is changing too fast; retry")

    async def load(self) -> dict[str, Attribute]:
        """Every attribute by id, as of now."""
        return (await self._load())[0]

    async def _load(self) -> tuple[dict[str, Attribute], int | None]:
        recorded = await self._store.read_stream(streams.config_stream("ingest"))
        known: dict[str, Attribute] = {}
        for item in recorded:
            event = from_recorded(item)
            if isinstance(event, AttributeDefined) and event.attribute_id:
                known[event.attribute_id] = attribute_from_event(event, item.recorded_at)
        return known, (recorded[-1].stream_position if recorded else None)


def _check_trait_key_free(attribute: Attribute, known: dict[str, Attribute]) -> None:
    """One trait key means one thing: two ids may not describe the same trait."""
    for other in known.values():
        if other.attribute == attribute.attribute and other.attribute_id != attribute.attribute_id:
            raise InvalidInput.field("attribute.attribute", f"is already described by {other.attribute_id!r}")


def _attribute_event(attribute: Attribute, actor: str) -> Any:
    event = AttributeDefined(
        name=attribute.attribute,
        entity="user",
        data_type=attribute.type.value,
        personal=attribute.personal_data,
        description=attribute.description,
        attribute_id=attribute.attribute_id,
        bands=tuple(band_to_json(b) for b in attribute.bands),
        attribute_version=attribute.version,
        defined_at=attribute.updated_at,
    )
    return event.to_new_event(EventMetadata(actor=actor))


def attribute_from_event(event: AttributeDefined, recorded_at: datetime) -> Attribute:
    """An AttributeDefined as a catalog entry."""
    return Attribute(
        attribute_id=event.attribute_id,
        attribute=event.name,
        type=AttributeType(event.data_type),
        description=event.description,
        bands=tuple(band_from_json(dict(b)) for b in event.bands),
        personal_data=event.personal,
        version=event.attribute_version,
        updated_at=event.defined_at or recorded_at,
    )


class CsvImports:
    """Stream a CSV file through the collector in batches; memory stays bounded by one chunk and one batch."""

    def __init__(
        self,
        collector: Collector,
        catalog: AttributeCatalog,
        store: EventStore,
        *,
        batch_size: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._collector = collector
        self._catalog = catalog
        self._store = store
        self._batch_size = batch_size or CSV_BATCH
        self._clock = clock

    async def run(
        self, source_id: str, import_id: str, spec: ImportSpec, chunks: AsyncIterator[bytes]
    ) -> tuple[str, ImportReport]:
        """Import the file the chunks carry; returns the import id and the report."""
        validate_spec(spec)
        import_id = import_id or str(uuid.uuid4())
        if not _IMPORT_ID.match(import_id):
            raise InvalidInput.field("header.import_id", "letters, digits, '_', '.', '-'; at most 128")
        job = _Job(self, source_id, import_id, spec, CsvParser(spec.delimiter), await self._catalog.load())
        async for chunk in chunks:
            if len(chunk) > MAX_CHUNK_BYTES:
                raise InvalidInput.field("chunk", f"is {len(chunk)} bytes; at most {MAX_CHUNK_BYTES}")
            await job.take(job.parser.feed(chunk))
        await job.take(job.parser.finish())
        await job.flush()
        if job.mapper is None:
            raise InvalidInput.field("chunk", "the file has no header line")
        if not spec.dry_run:
            await self._completed(source_id, import_id, job.report)
        log.info("csv_import_completed", import_id=import_id, **_counts(job.report))
        return import_id, job.report

    async def _completed(self, source_id: str, import_id: str, report: ImportReport) -> None:
        event = CsvImportCompleted(
            import_id=import_id,
            source_id=source_id,
            rows_accepted=report.rows_imported,
            rows_rejected=report.rows_rejected,
            completed_at=self._clock(),
            rows_read=report.rows_read,
        )
        actor = "admin" if source_id == "admin" else f"source:{source_id}"
        try:
            await self._store.append(
                streams.csv_import_stream(import_id),
                [event.to_new_event(EventMetadata(actor=actor))],
                ExpectedVersion.NO_STREAM,
            )
        except WrongExpectedVersion:
            # A retried import: its rows came back as duplicates; the first completion stays the record.
            log.info("csv_import_repeated", import_id=import_id)


def _counts(report: ImportReport) -> dict[str, int]:
    return {
        "rows_read": report.rows_read,
        "rows_imported": report.rows_imported,
        "rows_duplicate": report.rows_duplicate,
        "rows_rejected": report.rows_rejected,
    }


class _Job:
    """The state of one running import."""

    def __init__(
        self,
        imports: CsvImports,
        source_id: str,
        import_id: str,
        spec: ImportSpec,
        parser: CsvParser,
        catalog: dict[str, Attribute],
    ) -> None:
        self.imports, self.source_id, self.import_id, self.spec = imports, source_id, import_id, spec
        self.parser, self.catalog = parser, catalog
        self.mapper: RowMapper | None = None
        self.report = ImportReport()
        self.batch: list[tuple[int, dict[str, Any]]] = []

    async def take(self, items: Sequence[Record | BadRow]) -> None:
        """Map each record to a message (the first one is the header) and send full batches."""
        for item in items:
            if self.mapper is None:
                if isinstance(item, BadRow):
                    raise InvalidInput.field("chunk", f"the header line is not readable: {item.reason}")
                self.mapper = RowMapper.for_header(item, self.spec, self.catalog)
                continue
            self.report.rows_read += 1
            if self.report.rows_read % PROGRESS_EVERY == 0:
                log.info("csv_import_progress", import_id=self.import_id, **_counts(self.report))
            message = self.mapper.to_message(item) if isinstance(item, Record) else item
            if isinstance(message, BadRow):
                self.report.reject(message)
                continue
            self.batch.append((item.line, message))
            if len(self.batch) >= self.imports._batch_size:
                await self.flush()

    async def flush(self) -> None:
        """Send the batch through the collector (or only validate it, on a dry run)."""
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self.spec.dry_run:
            self._validate_only(batch)
            return
        outcomes = await self.imports._collector.collect(
            self.source_id,
            [message for _, message in batch],
            default_type="identify",
            path="row",
            indexed=False,
        )
        for (line, _), outcome in zip(batch, outcomes, strict=True):
            self._count(line, outcome)

    def _count(self, line: int, outcome: Outcome) -> None:
        if outcome.status is Status.ACCEPTED:
            self.report.rows_imported += 1
        elif outcome.status is Status.DUPLICATE:
            self.report.rows_duplicate += 1
        else:
            self.report.reject(BadRow(line, _rejection_text(outcome), self._column_of(outcome)))

    def _validate_only(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """A dry run checks the Segment spec rules (dedupe, suppression and plans are not consulted)."""
        now = self.imports._clock()
        for line, message in batch:
            try:
                parse_message(message, received_at=now, default_type="identify", path="row")
            except InvalidMessage as error:
                fields = ", ".join(v.field for v in error.violations)
                self.report.reject(BadRow(line, f"rejected ({error.rejection.name}) at {fields}"))

    def _column_of(self, outcome: Outcome) -> str:
        """The timestamp column, when the collector blamed the timestamp."""
        if self.spec.timestamp_column and any(v.field.endswith("timestamp") for v in outcome.violations):
            return self.spec.timestamp_column
        return ""


def _rejection_text(outcome: Outcome) -> str:
    """Why the collector rejected a row: the reason and the field paths, never the values."""
    reason = outcome.reason.name if outcome.reason else "REJECTED"
    fields = [v.field for v in outcome.violations] + [
        f"{v.reason.value}:{v.field}" if v.field else v.reason.value for v in outcome.plan_violations
    ]
    return f"rejected ({reason})" + (f" at {', '.join(fields)}" if fields else "")


async def flush_blocked_forever(
    enforcer: PlanEnforcer, sink: Callable[[list[Drained]], Any], every: float
) -> None:
    """Move the blocked tally into its table every few seconds (the last part is flushed on stop)."""
    while True:
        await asyncio.sleep(every)
        await flush_blocked(enforcer, sink)


async def flush_blocked(enforcer: PlanEnforcer, sink: Callable[[list[Drained]], Any]) -> bool:
    """Write the tally so far; True when written. A write in progress finishes even if the caller is cancelled
    (the tally left the enforcer), and a write that fails puts the tally back, so no count is lost."""
    drained = enforcer.drain()
    if not drained:
        return True
    writing = asyncio.ensure_future(asyncio.to_thread(sink, drained))
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await writing
        if writing.cancelled() or writing.exception() is not None:
            enforcer.restore(drained)
        raise
    except Exception as error:
        enforcer.restore(drained)
        log.warning("blocked_counts_not_written", error=f"{type(error).__name__}: {error}")
        return False
    return True
