"""The reactor: follow the log in global order, decide, append, checkpoint — one loop for every service.

A batch is decided inside the read-model transaction (on a worker thread), what it decided is appended, and
only then does the transaction commit, with the new position. A crash before the append loses nothing (the
batch is read again); a crash after it doubles nothing (the batch is decided again, identically, and the log
absorbs the re-append of the same event ids). Transient faults (the log or a database briefly away) are
retried with backoff for as long as they last; an event that keeps failing is parked: an `EventParked` names
it and the error, the reactor moves past it, and its status counts it. Catching up reads full pages a page
ahead (the policy prepares the next while the current one is decided); once at the head it follows the log's
subscription, which wakes it on new events instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventStore, EventStoreError, RecordedEvent, append_all
from cdp.events.streams import parked_stream
from cdp.faults import describe, is_transient
from cdp.reactor import feed
from cdp.reactor.checkpoint import (
    CheckpointConflict,
    checkpoint_metadata,
    load_checkpoint,
    move_checkpoint,
    write_checkpoint,
)
from cdp.reactor.parking import count_parked, parked_event
from cdp.reactor.policy import Policy, Projection, as_policy
from cdp.reactor.status import ReactorStatus, RetryPolicy, State
from cdp.sqlengine import create_tables

log = structlog.get_logger(__name__)

DEFAULT_RETRY = RetryPolicy()

_UNPREPARED: Any = object()
"""A page whose `prepare` has not run (or failed): it is prepared again in its batch's own attempt."""


class _Interrupted(Exception):
    """`stop()` was called while an event was being retried: leave it for the next run."""


class ReactorHalted(Exception):
    """So many events in a row failed that the fault is the reactor's own (e.g. its database), not theirs."""


@dataclass(frozen=True)
class _Page:
    after: int
    head: int
    events: Sequence[RecordedEvent]
    prepared: Any


class Reactor:
    """Runs one policy over the log: `run()` until stopped, or `catch_up()` once; `status()` for health."""

    def __init__(
        self,
        store: EventStore,
        policy: Policy | Projection,
        engine: Engine,
        *,
        batch_size: int = 500,
        linger: float = 0.02,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._policy = as_policy(policy)
        self._parked_stream = parked_stream(self._policy.name)  # also checks the name is an opaque id
        self._engine = engine.execution_options(sqlite_immediate=True)
        self._batch_size = batch_size
        # Live, wait this long after the first new event for others to join it: one read-model transaction per
        # 20 ms instead of one per append keeps a busy service's threads (and the GIL) free for its callers, at
        # the price of a read model that trails the log by that much more.
        self._linger = linger
        self._retry = retry
        self._rate_window = rate_window
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()  # batches, (re)starts and `exclusive()` holders take turns
        self._advanced = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._started = self._loaded = False
        self._state = State.IDLE
        self._position = self._scanned = self._head = -1
        self._retries = self._parked = self._parked_in_a_row = 0
        self._last_error: str | None = None
        self._applied: deque[tuple[float, int]] = deque()

    @property
    def name(self) -> str:
        """The policy's name (its checkpoint row)."""
        return self._policy.name

    @property
    def position(self) -> int:
        """The checkpoint: global position of the last event reacted to (or parked)."""
        return self._position

    # -- running ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Catch up, then follow live appends, until `stop()` or cancellation; transient faults are retried."""
        self._stopping.clear()
        try:
            await self._retrying(self._run_once)
            self._state = State.STOPPED
        except asyncio.CancelledError:
            self._state = State.STOPPED
            raise
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            await self._policy.close()

    async def catch_up(self) -> int:
        """React to everything up to the current head, then return the checkpoint (tests, tools, rebuilds)."""
        self._stopping.clear()
        try:
            await self._retrying(self._catch_up_once)
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            await self._policy.close()
        self._state = State.IDLE
        return self._position

    def stop(self) -> None:
        """Ask the reactor to finish the batch in hand and return from `run`."""
        self._stopping.set()

    async def start(self) -> None:
        """Load the checkpoint and the policy's state, unless done since the last failure."""
        async with self._lock:
            await self._start_locked()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold batches off (the policy is loaded): for a use case that appends and saves on its own."""
        async with self._lock:
            await self._start_locked()
            yield

    def invalidate(self) -> None:
        """The policy's in-memory state can no longer be trusted: reload it before the next batch."""
        self._policy.reset()
        self._started = False

    async def wait_for(self, position: int, within: float = 10.0) -> None:
        """Return once every event up to `position` (a position the log holds) that the policy follows has
        been reacted to; TimeoutError after `within` seconds. Events it does not follow need no waiting."""
        async with asyncio.timeout(within):
            while True:
                async with self._advanced:
                    if max(self._position, self._scanned) >= position:
                        return
                    seen = self._position
                pending = await self._next_followed(seen)
                if pending is None or pending > position:
                    await self._mark_scanned(position)
                    return
                async with self._advanced:
                    await self._advanced.wait_for(functools.partial(self._moved_from, seen))

    async def _next_followed(self, after: int) -> int | None:
        """The position of the first event after `after` that the policy follows, if the log holds one."""
        found = await self._store.read_all(after, limit=1, filter=self._policy.filter)
        return found[0].global_position if found else None

    def _moved_from(self, position: int) -> bool:
        return self._position != position

    async def rebuild(self) -> int:
        """Drop the policy's tables, recreate them and react to the log again from START; the new checkpoint."""
        metadata = self._policy.metadata
        if metadata is None:
            raise RuntimeError(f"reactor {self.name} keeps its own tables; its policy rebuilds them")
        if self._state in (State.CATCHING_UP, State.LIVE, State.RETRYING):
            raise RuntimeError(f"reactor {self.name} is running; stop it before a rebuild")
        async with self._lock:
            await asyncio.to_thread(self._reset_tables, metadata)
            self.invalidate()
            self._position = self._scanned = -1
            self._applied.clear()
        log.info("reactor_rebuilding", reactor=self.name)
        return await self.catch_up()

    async def status(self) -> ReactorStatus:
        """Position, head, lag (net of events the filter skips), recent events/s, retries and parked events."""
        with contextlib.suppress(EventStoreError):  # a log outage must not break the health endpoint
            self._head = max(self._head, await self._store.head_position())
            if (
                self._head > max(self._position, self._scanned)
                and await self._next_followed(self._position) is None
            ):
                self._scanned = max(self._scanned, self._head)
        return ReactorStatus(
            name=self.name,
            state=self._state.value,
            position=self._position,
            head=self._head,
            lag=max(0, self._head - max(self._position, self._scanned)),
            events_per_second=self._rate(),
            retries=self._retries,
            parked=self._parked,
            last_error=self._last_error,
        )

    # -- the loop -------------------------------------------------------------------------------------------

    async def _run_once(self) -> None:
        await self.start()
        while not self._stopping.is_set():
            await self._catch_up()
            if not self._stopping.is_set():
                await self._follow()

    async def _catch_up_once(self) -> None:
        await self.start()
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Full pages, each read (and prepared) while the one before it is decided; stops at a short page."""
        self._state = State.CATCHING_UP
        ahead = asyncio.ensure_future(self._read_page(self._position))
        try:
            while not self._stopping.is_set():
                page = await ahead
                if page.after != self._position:  # the position moved meanwhile (an exclusive holder)
                    ahead = asyncio.ensure_future(self._read_page(self._position))
                    continue
                full = len(page.events) >= self._batch_size
                if full:
                    ahead = asyncio.ensure_future(self._read_page(page.events[-1].global_position))
                if page.events:
                    await self._handle(page.events, page.prepared)
                if not full:
                    await self._mark_scanned(page.head)  # nothing followed is left up to that head
                    return
        finally:
            if not ahead.done():
                ahead.cancel()
            elif not ahead.cancelled():
                ahead.exception()  # retrieved: a failed read-ahead nobody used is not worth a warning

    async def _read_page(self, after: int) -> _Page:
        head = await self._store.head_position()
        events = await self._store.read_all(after, limit=self._batch_size, filter=self._policy.filter)
        self._head = max(self._head, head)
        prepared = _UNPREPARED
        if events:
            try:
                prepared = await self._policy.prepare(events, backlog=len(events) >= self._batch_size)
            except Exception as error:
                if is_transient(error):
                    raise
                # prepared again in the batch's own attempt, where a failure counts against its events
        return _Page(after, head, events, prepared)

    async def _follow(self) -> None:
        """Batches of whatever the subscription delivered; back to catching up when a full batch arrives."""
        self._state = State.LIVE
        queue: asyncio.Queue[feed.Item] = asyncio.Queue(self._batch_size * 2)
        pump = asyncio.create_task(feed.pump(self._store, self._position, self._policy.filter, queue))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while batch := await feed.next_batch(queue, stopping, size=self._batch_size, linger=self._linger):
                events = [item for item in batch if isinstance(item, RecordedEvent)]
                if events:
                    await self._handle(events)
                failure = next((item for item in batch if isinstance(item, BaseException)), None)
                if failure is not None:
                    raise failure
                if len(events) >= self._batch_size:
                    return  # behind: pages read ahead are faster than one subscription event at a time
        finally:
            for task in (pump, stopping):
                task.cancel()
            await asyncio.gather(pump, stopping, return_exceptions=True)

    # -- one batch --------------------------------------------------------------------------------------------

    async def _handle(self, events: Sequence[RecordedEvent], prepared: Any = _UNPREPARED) -> None:
        """React to the events; a batch that fails for a reason other than an outage is split in halves until
        the failing event is alone, which is retried with backoff and then parked."""
        try:
            await self._attempt(events, prepared)
            self._parked_in_a_row = 0
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if is_transient(error) or isinstance(error, CheckpointConflict | ReactorHalted):
                raise
            await self._recover()
            if len(events) > 1:
                half = len(events) // 2
                await self._handle(events[:half])
                await self._handle(events[half:])
            else:
                await self._retry_or_park(events[0], error)

    async def _retry_or_park(self, event: RecordedEvent, error: Exception) -> None:
        for attempt in range(1, self._retry.park_after):
            self._note_error(error)
            if not await self._pause(attempt):
                raise _Interrupted
            try:
                await self._attempt([event], _UNPREPARED)
                self._parked_in_a_row = 0
                return
            except asyncio.CancelledError:
                raise
            except Exception as again:
                if is_transient(again):
                    raise
                error = again
                await self._recover()
        await self._park(event, error)

    async def _attempt(self, events: Sequence[RecordedEvent], prepared: Any) -> None:
        """Prepare (unless done), then decide, append and commit under the lock."""
        unseen = self._unseen(events)
        if not unseen:
            return
        if prepared is _UNPREPARED or len(unseen) != len(events):
            prepared = await self._policy.prepare(unseen, backlog=False)
        async with self._lock:
            await self._start_locked()
            if len(self._unseen(unseen)) != len(unseen):  # another caller reacted to some of them meanwhile
                unseen = self._unseen(unseen)
                if not unseen:
                    return
                prepared = await self._policy.prepare(unseen, backlog=False)
            await self._commit(unseen, prepared)
            await self._committed()

    async def _committed(self) -> None:
        """The policy's after-commit hook. An outage is raised (retried like any: the reload runs `load`, which
        finishes the work); another failure is logged and left to the next commit or start, never parked: the
        batch itself is committed."""
        try:
            await self._policy.committed()
        except Exception as error:
            if is_transient(error):
                raise
            log.error("reactor_committed_hook_failed", reactor=self.name, error=describe(error))

    def _unseen(self, events: Sequence[RecordedEvent]) -> Sequence[RecordedEvent]:
        """The events after the checkpoint (a duplicate delivery is reacted to once)."""
        position = self._position
        if not events or events[0].global_position > position:
            return events
        return [event for event in events if event.global_position > position]

    async def _commit(self, events: Sequence[RecordedEvent], prepared: Any) -> None:
        """The batch's transaction on a worker thread; a cancellation waits for it to finish first."""
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(asyncio.to_thread(self._transaction, loop, events, prepared))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            if work.done() and not work.cancelled() and work.exception() is None:
                await self._advance(events[-1].global_position, len(events))
            raise
        await self._advance(events[-1].global_position, len(events))

    def _transaction(
        self, loop: asyncio.AbstractEventLoop, events: Sequence[RecordedEvent], prepared: Any
    ) -> None:
        """On a worker thread: decide, append (on the event loop, waited for here), move the checkpoint, commit."""
        with Session(self._engine) as session, session.begin():
            appends = list(self._policy.decide(session, events, prepared))
            if appends:
                asyncio.run_coroutine_threadsafe(append_all(self._store, appends), loop).result()
            move_checkpoint(session, self.name, self._position, events[-1].global_position)

    async def _park(self, event: RecordedEvent, error: Exception) -> None:
        """Record that the event is given up on, and move past it (unless too many were, in a row)."""
        self._parked_in_a_row += 1
        if self._parked_in_a_row > self._retry.park_limit:
            raise ReactorHalted(
                f"{self._retry.park_limit} events in a row failed; the last: {describe(error)}"
            )
        new = parked_event(self.name, event, error, self._retry.park_after)
        async with self._lock:
            if event.global_position <= self._position:
                return
            result = await self._store.append(self._parked_stream, [new])
            await asyncio.to_thread(self._move_only, event.global_position)
            await self._advance(event.global_position, 0)
            self._parked += 0 if result.replayed else 1
        log.error(
            "reactor_event_parked",
            reactor=self.name,
            event_id=str(event.id),
            position=event.global_position,
            event_type=event.type,
            error=describe(error),
        )

    def _move_only(self, position: int) -> None:
        with Session(self._engine) as session, session.begin():
            move_checkpoint(session, self.name, self._position, position)

    async def _advance(self, position: int, count: int) -> None:
        async with self._advanced:
            self._position = position
            self._head = max(self._head, position)
            self._retries = 0
            if count:
                self._applied.append((self._clock(), count))
            self._advanced.notify_all()

    async def _mark_scanned(self, position: int) -> None:
        async with self._advanced:
            self._scanned = max(self._scanned, position)
            self._advanced.notify_all()

    # -- starting, failing, retrying ----------------------------------------------------------------------

    async def _start_locked(self) -> None:
        if self._started:
            return
        position = await asyncio.to_thread(self._load)
        if self._loaded and position > self._position:
            raise CheckpointConflict(f"checkpoint of {self.name} moved under this runner (to {position})")
        self._position, self._loaded = position, True
        self._scanned = max(self._scanned, self._position)
        self._parked = await count_parked(self._store, self._parked_stream)
        await self._policy.load(self._position)
        self._started = True

    def _load(self) -> int:
        if self._policy.metadata is not None:
            create_tables(self._policy.metadata, self._engine)
        return load_checkpoint(self._engine, self.name)

    def _reset_tables(self, metadata: Any) -> None:
        metadata.drop_all(self._engine)
        create_tables(metadata, self._engine)
        create_tables(checkpoint_metadata, self._engine)
        with Session(self._engine) as session, session.begin():
            write_checkpoint(session, self.name, -1)

    async def _recover(self) -> None:
        """After a failed batch: the transaction rolled back; reload the policy before the next attempt."""
        self.invalidate()
        await self.start()

    async def _retrying(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run `attempt`, retrying transient faults with backoff until it returns or `stop()` is called."""
        while True:
            try:
                await attempt()
                return
            except _Interrupted:
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.invalidate()
                if not is_transient(error):
                    raise
                self._note_error(error)
                if self._retry.max_attempts is not None and self._retries > self._retry.max_attempts:
                    raise
                self._state = State.RETRYING
                log.warning("reactor_retrying", reactor=self.name, error=self._last_error)
                if not await self._pause(self._retries):
                    return

    def _note_error(self, error: BaseException) -> None:
        self._retries += 1
        self._last_error = describe(error)

    async def _pause(self, attempt: int) -> bool:
        """Back off before retry number `attempt`; False when `stop()` was called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._retry.delay(attempt, self._rng))
        return not self._stopping.is_set()

    def _rate(self) -> float:
        now = self._clock()
        while self._applied and self._applied[0][0] < now - self._rate_window:
            self._applied.popleft()
        return sum(count for _, count in self._applied) / self._rate_window

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError):
            self._state = State.STOPPED
            return
        self._state = State.FAILED
        self._last_error = describe(error)
        log.error("reactor_failed", reactor=self.name, error=self._last_error)
