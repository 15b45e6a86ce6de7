"""Projections (reactors that append nothing) over the in-memory log and an in-memory SQLite read model."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, exc, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from cdp.eventlog.memory import InMemoryEventStore
from cdp.eventlog.port import ALL, START, EventFilter, EventStoreUnavailable, RecordedEvent
from cdp.reactor import Reactor, RetryPolicy, checkpoints
from tests.unit.reactor.counting import EventTypeCounts, SimulatedCrash, events, read_counts
from tests.waiting import eventually

FAST_RETRY = RetryPolicy(initial=0.001, maximum=0.01)


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    yield engine
    engine.dispose()


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore()


def runner(store: Any, engine: Engine, projection: EventTypeCounts | None = None, **kw: Any) -> Reactor:
    return Reactor(store, projection or EventTypeCounts(), engine, retry=FAST_RETRY, **kw)


def stored_checkpoint(engine: Engine) -> int | None:
    with Session(engine) as session:
        return session.scalar(select(checkpoints.c.position).where(checkpoints.c.name == "event_type_counts"))


async def until(condition: Any) -> None:
    """Wait for a condition the runner makes true in the background (a generous cap, not a timing check)."""
    await eventually(condition)


async def test_catch_up_applies_everything_in_batches(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(25))
    projection = EventTypeCounts()
    position = await runner(store, engine, projection, batch_size=10).catch_up()
    assert position == await store.head_position()
    assert read_counts(engine) == {"Viewed": 9, "Clicked": 8, "Bought": 8}
    assert projection.batches == [10, 10, 5]
    assert stored_checkpoint(engine) == position


async def test_a_crash_mid_way_leaves_model_and_checkpoint_consistent(
    store: InMemoryEventStore, engine: Engine
) -> None:
    await store.append("page-1", events(30))
    crashing = runner(store, engine, EventTypeCounts(crash_at=17), batch_size=5)
    with pytest.raises(SimulatedCrash):
        await crashing.catch_up()
    assert stored_checkpoint(engine) == 14
    assert sum(read_counts(engine).values()) == 15  # exactly the events up to the checkpoint
    assert (await crashing.status()).state == "failed"
    await runner(store, engine, batch_size=5).catch_up()
    assert read_counts(engine) == {"Viewed": 10, "Clicked": 10, "Bought": 10}


async def test_an_event_that_keeps_failing_is_parked_and_the_others_are_applied(
    store: InMemoryEventStore, engine: Engine
) -> None:
    await store.append("page-1", events(30))
    projection = EventTypeCounts(EventFilter(categories=("page",)), fail_at=17)
    counting = runner(store, engine, projection, batch_size=5)
    assert await counting.catch_up() == 29
    assert sum(read_counts(engine).values()) == 29  # all but the parked one
    assert read_counts(engine)["Bought"] == 9  # position 17 is the 18th event: a "Bought"
    status = await counting.status()
    assert (status.parked, status.state, status.lag) == (1, "idle", 0)
    [parked] = await store.read_stream("parked-event_type_counts")
    assert parked.type == "EventParked" and b"cannot count the event at 17" in parked.data
    # The batch of five was split until the failing event stood alone; every other event was applied once.
    assert sum(projection.batches) == 29


async def test_running_again_is_harmless(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(12))
    await runner(store, engine).catch_up()
    second = EventTypeCounts()
    await runner(store, engine, second).catch_up()
    assert second.batches == []
    assert sum(read_counts(engine).values()) == 12


async def test_follows_live_appends_and_stops_cleanly(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(5))
    live = runner(store, engine)
    task = asyncio.create_task(live.run())
    await until(lambda: live.position == 4)
    await store.append("page-2", events(7))
    await until(lambda: live.position == 11)
    assert (await live.status()).state == "live"
    live.stop()
    await asyncio.wait_for(task, 2)
    assert (await live.status()).state == "stopped"
    assert sum(read_counts(engine).values()) == 12
    assert stored_checkpoint(engine) == 11


async def test_cancellation_finishes_the_batch_in_hand(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(8))
    slow = EventTypeCounts(delay=0.2)
    live = runner(store, engine, slow, batch_size=100)
    task = asyncio.create_task(live.run())
    await asyncio.to_thread(slow.entered.wait, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.batches == [8]
    assert stored_checkpoint(engine) == 7 and sum(read_counts(engine).values()) == 8


async def test_rebuild_equals_live(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(40))
    live = runner(store, engine, batch_size=7)
    task = asyncio.create_task(live.run())
    for n in range(5):
        await store.append(f"page-{n + 2}", events(n + 3, ("Bought", "Refunded")))
    await until(lambda: live.position == 64)
    live.stop()
    await task
    before = read_counts(engine)
    assert await live.rebuild() == 64
    assert read_counts(engine) == before
    assert sum(before.values()) == 65


async def test_rebuild_refuses_while_running(store: InMemoryEventStore, engine: Engine) -> None:
    live = runner(store, engine)
    task = asyncio.create_task(live.run())
    await until(lambda: live._state.value == "live")
    with pytest.raises(RuntimeError, match="running"):
        await live.rebuild()
    live.stop()
    await task


async def test_lag_and_rate_are_reported(store: InMemoryEventStore, engine: Engine) -> None:
    clock = [100.0]
    await store.append("page-1", events(50))
    counted = runner(store, engine, batch_size=20, rate_window=10.0, clock=lambda: clock[0])
    before = await counted.status()
    assert (before.position, before.head, before.lag) == (START, 49, 50)
    await counted.catch_up()
    after = await counted.status()
    assert (after.position, after.lag) == (49, 0)
    assert after.events_per_second == pytest.approx(5.0)
    clock[0] += 11
    assert (await counted.status()).events_per_second == 0


async def test_events_the_filter_skips_are_not_lag(store: InMemoryEventStore, engine: Engine) -> None:
    await store.append("page-1", events(5))
    await store.append("other-1", events(5))
    filtered = runner(store, engine, EventTypeCounts(EventFilter(categories=("page",))))
    await filtered.catch_up()
    await store.append("other-2", events(3))
    status = await filtered.status()
    assert (status.position, status.head, status.lag) == (4, 12, 0)
    await store.append("page-2", events(1))
    assert (await filtered.status()).lag == 1  # the skipped events 5..12 are not work left to do


class FlakyStore(InMemoryEventStore):
    """The real in-memory log, whose reads fail the first `failures` times (a lost connection)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[Any]:
        if self.failures > 0:
            self.failures -= 1
            raise EventStoreUnavailable("connection reset")
        return await super().read_all(after, limit=limit, filter=filter)

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        return self._failing_subscription(after, filter)

    async def _failing_subscription(self, after: int, filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        async for event in super().subscribe(after, filter=filter):
            yield event
            if self.failures > 0:
                self.failures -= 1
                raise EventStoreUnavailable("subscription dropped")


async def test_transient_store_faults_are_retried(engine: Engine) -> None:
    store = FlakyStore(failures=3)
    await store.append("page-1", events(10))
    flaky = runner(store, engine)
    assert await flaky.catch_up() == 9
    status = await flaky.status()
    assert status.last_error == "cdp.eventlog.port.EventStoreUnavailable: connection reset"
    assert sum(read_counts(engine).values()) == 10


async def test_a_dropped_subscription_resumes_from_the_checkpoint(engine: Engine) -> None:
    store = FlakyStore(failures=0)
    live = runner(store, engine, batch_size=1)
    task = asyncio.create_task(live.run())
    await until(lambda: live._state.value == "live")
    store.failures = 2
    for n in range(6):
        await store.append(f"page-{n}", events(2))
    await until(lambda: live.position == 11)
    live.stop()
    await task
    assert sum(read_counts(engine).values()) == 12


class LockedOnce(EventTypeCounts):
    """The read-model database is busy on the first attempt (SQLite 'database is locked')."""

    def __init__(self) -> None:
        super().__init__()
        self.locked = True

    def apply(self, session: Session, events: Any) -> None:
        super().apply(session, events)
        if self.locked:
            self.locked = False
            raise exc.OperationalError("UPDATE", {}, Exception("database is locked"))


async def test_transient_database_faults_roll_back_and_retry(
    store: InMemoryEventStore, engine: Engine
) -> None:
    await store.append("page-1", events(6))
    await runner(store, engine, LockedOnce()).catch_up()
    assert read_counts(engine) == {"Viewed": 2, "Clicked": 2, "Bought": 2}


async def test_retries_give_up_after_max_attempts(engine: Engine) -> None:
    store = FlakyStore(failures=10)
    limited = Reactor(store, EventTypeCounts(), engine, retry=RetryPolicy(0.001, 0.001, max_attempts=2))
    with pytest.raises(EventStoreUnavailable):
        await limited.catch_up()
    assert (await limited.status()).state == "failed"


async def test_stop_interrupts_a_backoff() -> None:
    store = FlakyStore(failures=1000)
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    slow = Reactor(store, EventTypeCounts(), engine, retry=RetryPolicy(initial=30, maximum=30))
    task = asyncio.create_task(slow.run())
    await until(lambda: slow._state.value == "retrying")
    slow.stop()
    await asyncio.wait_for(task, 1)


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = RetryPolicy(initial=0.1, maximum=1.0)
    rng = random.Random(7)
    delays = [policy.delay(attempt, rng) for attempt in range(1, 8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)


async def test_waiting_for_a_position_past_events_the_filter_skips_needs_no_new_event(
    store: InMemoryEventStore, engine: Engine
) -> None:
    """The missed wake-up behind stalled waits: the head is an event the reactor does not follow (its own
    appends, another service's), so no batch will ever move its checkpoint there."""
    filtered = runner(store, engine, EventTypeCounts(EventFilter(categories=("page",))))
    task = asyncio.create_task(filtered.run())
    await store.append("page-1", events(3))
    await filtered.wait_for(await store.head_position())
    await store.append("other-1", events(4))  # after the reactor went idle: nothing wakes it
    await filtered.wait_for(await store.head_position(), within=30)
    await store.append("page-2", events(2))
    await filtered.wait_for(await store.head_position())
    assert sum(read_counts(engine).values()) == 5
    filtered.stop()
    await task


async def test_an_error_is_recorded_without_the_sql_and_its_parameters(
    store: InMemoryEventStore, engine: Engine
) -> None:
    """Parked events stay in the log for good: a database error's statement and values must not go there."""

    class Leaky(EventTypeCounts):
        def apply(self, session: Session, events: Any) -> None:
            raise exc.IntegrityError(
                "INSERT INTO t VALUES (?)", ("jane@example.com",), Exception("UNIQUE failed")
            )

    await store.append("page-1", events(1))
    reactor = runner(store, engine, Leaky())
    await reactor.catch_up()
    [parked] = await store.read_stream("parked-event_type_counts")
    assert b"jane@example.com" not in parked.data and b"UNIQUE failed" in parked.data
    assert "jane@example.com" not in str((await reactor.status()).last_error)
