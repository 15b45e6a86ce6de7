"""Projections: read models kept up to date from the log, with the checkpoint in the read model's own database.

A runner applies a batch of events and saves the position it reached in the same transaction, so a crash
at any point leaves the read model and its checkpoint consistent, and running a batch again is harmless.
Read models use sync SQLAlchemy 2 driven from a worker thread (`asyncio.to_thread`): one engine per service
database, no extra async driver, and projection code stays plain (no awaits inside `apply`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, exc, select
from sqlalchemy.orm import Session

from cdp.eventlog.port import (
    START,
    EventFilter,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    RecordedEvent,
)
from cdp.sqlengine import create_sql_engine

log = structlog.get_logger(__name__)
T = TypeVar("T")

checkpoint_metadata = MetaData()
checkpoints = Table(
    "projection_checkpoints",
    checkpoint_metadata,
    Column("name", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False),
)

TRANSIENT: tuple[type[BaseException], ...] = (EventStoreUnavailable, exc.OperationalError)
"""Faults worth retrying: the log or the read-model database is briefly unreachable or busy."""


class Projection(Protocol):
    """A read model: its tables, the events it needs, and how one batch of them changes the tables."""

    @property
    def name(self) -> str:
        """Unique within the database; names the checkpoint row."""

    @property
    def metadata(self) -> MetaData:
        """The read model's tables (dropped and recreated by `rebuild`)."""

    @property
    def filter(self) -> EventFilter:
        """Which events to read; the others are never fetched."""

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for these events, in the caller's transaction; must not commit."""


class ProjectionConflict(Exception):
    """Another runner advanced this projection's checkpoint: two runners must not share a read model."""


class State(enum.Enum):
    """What a runner is doing."""

    IDLE = "idle"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient faults; `max_attempts=None` retries forever."""

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    max_attempts: int | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry number `attempt` (1-based): full backoff halved at random, so peers spread."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class ProjectionStatus:
    """What a health endpoint shows about one projection."""

    name: str
    state: str
    position: int
    head: int
    lag: int
    events_per_second: float
    retries: int
    last_error: str | None


class ProjectionRunner:
    """Catches a projection up with `read_all` in batches, then follows `subscribe`, until stopped."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        engine: Engine,
        *,
        batch_size: int = 500,
        linger: float = 0.02,
        retry: RetryPolicy = RetryPolicy(),
        rate_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._projection = projection
        self._engine = engine.execution_options(sqlite_immediate=True)
        self._batch_size = batch_size
        # When following live appends, wait this long after the first new event for others to join it: one
        # read-model transaction per 20 ms instead of one per append keeps a busy service's threads (and the
        # GIL) free for its callers, at the price of a read model that trails the log by that much more.
        self._linger = linger
        self._retry = retry
        self._rate_window = rate_window
        self._clock = clock
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._state = State.IDLE
        self._position = START
        self._scanned = START
        self._head = START
        self._retries = 0
        self._last_error: str | None = None
        self._applied: deque[tuple[float, int]] = deque()
        self._prepared = False

    @property
    def position(self) -> int:
        """The checkpoint: global position of the last event applied."""
        return self._position

    async def run(self) -> None:
        """Catch up, then follow live appends, until `stop()` or cancellation; retries transient faults."""
        self._stopping.clear()
        try:
            await self._retrying(self._catch_up_then_follow)
            self._state = State.STOPPED
        except asyncio.CancelledError:
            self._state = State.STOPPED
            raise
        except BaseException as error:
            self._fail(error)
            raise

    async def catch_up(self) -> int:
        """Apply everything up to the current head, then return the checkpoint (for tests, tools, rebuild)."""
        self._stopping.clear()
        try:
            await self._retrying(self._catch_up)
        except BaseException as error:
            self._fail(error)
            raise
        self._state = State.IDLE
        return self._position

    def stop(self) -> None:
        """Ask the runner to finish the batch in hand and return from `run`."""
        self._stopping.set()

    async def rebuild(self) -> int:
        """Drop the read model's tables, recreate them and replay the log from START; returns the checkpoint."""
        if self._state in (State.CATCHING_UP, State.LIVE, State.RETRYING):
            raise RuntimeError(f"projection {self._projection.name} is running; stop it before a rebuild")
        await asyncio.to_thread(self._reset)
        log.info("projection_rebuilding", projection=self._projection.name)
        return await self.catch_up()

    async def status(self) -> ProjectionStatus:
        """Position, head, lag (head - position, net of events the filter skips) and recent events/s."""
        with contextlib.suppress(EventStoreError):  # a log outage must not break the health endpoint
            self._head = max(self._head, await self._store.head_position())
            await self._skip_unfiltered_tail()
        done = max(self._position, self._scanned)
        return ProjectionStatus(
            name=self._projection.name,
            state=self._state.value,
            position=self._position,
            head=self._head,
            lag=max(0, self._head - done),
            events_per_second=self._rate(),
            retries=self._retries,
            last_error=self._last_error,
        )

    async def _catch_up_then_follow(self) -> None:
        """One attempt: catch up from the stored checkpoint, then follow."""
        await self._catch_up()
        if not self._stopping.is_set():
            await self._follow()

    async def _catch_up(self) -> None:
        """Read pages after the checkpoint until a short page says the head is reached."""
        await self._prepare()
        self._state = State.CATCHING_UP
        while not self._stopping.is_set():
            head = await self._store.head_position()
            self._head = max(self._head, head)
            page = await self._store.read_all(
                self._position, limit=self._batch_size, filter=self._projection.filter
            )
            if page:
                await self._commit(page)
            if len(page) < self._batch_size:
                # Nothing matching the filter up to `head` is left: events up to there count as processed.
                self._scanned = max(self._scanned, head)
                return

    async def _follow(self) -> None:
        """Follow the subscription, applying whatever has arrived as one batch."""
        self._state = State.LIVE
        queue: asyncio.Queue[RecordedEvent | BaseException] = asyncio.Queue(self._batch_size * 2)
        pump = asyncio.create_task(self._pump(queue))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while batch := await self._next_batch(queue, stopping):
                events = [item for item in batch if isinstance(item, RecordedEvent)]
                if events:
                    await self._commit(events)
                failure = next((item for item in batch if isinstance(item, BaseException)), None)
                if failure is not None:
                    raise failure
        finally:
            for task in (pump, stopping):
                task.cancel()
            await asyncio.gather(pump, stopping, return_exceptions=True)

    async def _next_batch(
        self, queue: asyncio.Queue[RecordedEvent | BaseException], stopping: asyncio.Task[Any]
    ) -> list[RecordedEvent | BaseException]:
        """Wait for one item (or the stop request), then take what else is queued, up to a batch."""
        getter = asyncio.create_task(queue.get())
        await asyncio.wait({getter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            return []
        batch = [getter.result()]
        if self._linger and not isinstance(batch[0], BaseException) and queue.qsize() < self._batch_size:
            await asyncio.wait({stopping}, timeout=self._linger)
        while (
            len(batch) < self._batch_size and not queue.empty() and not isinstance(batch[-1], BaseException)
        ):
            batch.append(queue.get_nowait())
        return batch

    async def _pump(self, queue: asyncio.Queue[RecordedEvent | BaseException]) -> None:
        """Move subscription events into the queue; a failure travels the same way, after the events before it."""
        try:
            async for recorded in self._store.subscribe(self._position, filter=self._projection.filter):
                await queue.put(recorded)
            await queue.put(EventStoreUnavailable("the subscription ended"))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await queue.put(error)

    async def _commit(self, events: Sequence[RecordedEvent]) -> None:
        """Apply and checkpoint in one transaction; a cancellation waits for the batch to finish first."""
        work = asyncio.ensure_future(asyncio.to_thread(self._apply_batch, events))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            raise
        self._position = events[-1].global_position
        self._head = max(self._head, self._position)
        self._retries = 0
        self._applied.append((self._clock(), len(events)))

    def _apply_batch(self, events: Sequence[RecordedEvent]) -> None:
        """In a worker thread: the projection's changes and the new checkpoint commit together or not at all."""
        name = self._projection.name
        with Session(self._engine) as session, session.begin():
            self._projection.apply(session, events)
            moved = session.execute(
                checkpoints.update()
                .where(checkpoints.c.name == name, checkpoints.c.position == self._position)
                .values(position=events[-1].global_position)
            )
            if getattr(moved, "rowcount", 1) != 1:
                raise ProjectionConflict(f"checkpoint of {name} moved under this runner")

    async def _prepare(self) -> None:
        """Create the tables and the checkpoint row if missing, and load the checkpoint."""
        self._position = await asyncio.to_thread(self._load_checkpoint)
        self._scanned = max(self._scanned, self._position)

    def _load_checkpoint(self) -> int:
        """Read (or create at START) this projection's checkpoint row."""
        checkpoint_metadata.create_all(self._engine)
        self._projection.metadata.create_all(self._engine)
        name = self._projection.name
        with Session(self._engine) as session, session.begin():
            position = session.scalar(select(checkpoints.c.position).where(checkpoints.c.name == name))
            if position is None:
                session.execute(checkpoints.insert().values(name=name, position=START))
                return START
            return int(position)

    def _reset(self) -> None:
        """Drop and recreate the read model, and put its checkpoint back to START."""
        self._projection.metadata.drop_all(self._engine)
        checkpoint_metadata.create_all(self._engine)
        with Session(self._engine) as session, session.begin():
            session.execute(checkpoints.delete().where(checkpoints.c.name == self._projection.name))
        self._position = self._scanned = START
        self._applied.clear()

    async def _retrying(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run `attempt`, retrying transient faults with backoff until it returns or `stop()` is called."""
        while True:
            try:
                await attempt()
                return
            except TRANSIENT as error:
                if not await self._back_off(error):
                    return

    async def _back_off(self, error: BaseException) -> bool:
        """Record a transient fault and sleep; False when the runner was stopped meanwhile."""
        self._retries += 1
        self._last_error = f"{type(error).__name__}: {error}"
        if self._retry.max_attempts is not None and self._retries > self._retry.max_attempts:
            raise error
        self._state = State.RETRYING
        delay = self._retry.delay(self._retries, self._rng)
        log.warning(
            "projection_retrying", projection=self._projection.name, error=self._last_error, delay=delay
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        return not self._stopping.is_set()

    async def _skip_unfiltered_tail(self) -> None:
        """Events after the checkpoint that the filter skips do not count as lag (probe: none match)."""
        head = self._head
        if head <= max(self._position, self._scanned):
            return
        pending = await self._store.read_all(self._position, limit=1, filter=self._projection.filter)
        if not pending:
            self._scanned = max(self._scanned, head)

    def _rate(self) -> float:
        """Events applied per second over the recent window."""
        now = self._clock()
        while self._applied and self._applied[0][0] < now - self._rate_window:
            self._applied.popleft()
        return sum(count for _, count in self._applied) / self._rate_window

    def _fail(self, error: BaseException) -> None:
        """Record a fatal error for `status()`."""
        if isinstance(error, asyncio.CancelledError):
            self._state = State.STOPPED
            return
        self._state = State.FAILED
        self._last_error = f"{type(error).__name__}: {error}"
        log.error("projection_failed", projection=self._projection.name, error=self._last_error)


def create_read_model_engine(url: str) -> Engine:
    """An engine for a service's read-model database; SQLite gets WAL and locks taken up front for writers."""
    # NORMAL sync is enough for read models: the log can always replay them.
    return create_sql_engine(
        url, sqlite_pragmas=("busy_timeout=10000", "journal_mode=WAL", "synchronous=NORMAL")
    )
