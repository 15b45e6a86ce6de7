"""The contract every reactor keeps, on every backend: subclass `ReactorContract` once per log and read model.

Each test gets an empty log and an empty read-model database. The policy is `Receipts` (one receipt event and
one row per order), whose every double reaction would show: a second row breaks its primary key, a second
receipt is a second event in the log.
"""

from __future__ import annotations

import abc
import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from cdp.eventlog import EventStore
from cdp.events import EventParked, from_recorded
from cdp.events.streams import parked_stream
from cdp.reactor import Reactor, ReactorHalted, RetryPolicy
from cdp.sqlengine import create_read_model_engine, read_only
from tests.integration.reactor.receipts import (
    ORDERS,
    Crash,
    CrashAfterAppend,
    Duplicating,
    Receipts,
    Unreachable,
    issued,
    place,
    rows,
)
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[3]
FAST = RetryPolicy(initial=0.001, maximum=0.01)
CHILD = """
import asyncio, sys
from cdp.eventlog import open_event_store
from cdp.reactor import Reactor
from cdp.sqlengine import create_read_model_engine, read_only
from tests.integration.reactor.receipts import Receipts, SlowAfterAppend

async def main():
    store = SlowAfterAppend(open_event_store(sys.argv[1]), pause=0.3)
    print("started", flush=True)
    await Reactor(store, Receipts(), create_read_model_engine(sys.argv[2]), batch_size=4).catch_up()
    print("finished", flush=True)

asyncio.run(main())
"""


class ReactorContract(abc.ABC):
    """What every reactor guarantees: once per event, in order, through crashes, duplicates, poison and outages."""

    @abc.abstractmethod
    async def open_store(self) -> EventStore:
        """A store on this test's (empty) log."""

    @abc.abstractmethod
    def store_url(self) -> str:
        """The URL of this test's log (for a child process)."""

    @abc.abstractmethod
    def read_model_url(self) -> str:
        """The SQLAlchemy URL of this test's (empty) read-model database."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        store = await self.open_store()
        yield store
        await store.close()

    @pytest.fixture
    def engine(self) -> AsyncIterator[Engine]:  # type: ignore[misc]
        engine = create_read_model_engine(self.read_model_url())
        yield engine
        engine.dispose()

    async def test_reacts_once_to_each_event_in_order_across_batches(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(25))
        policy = Receipts()
        reactor = Reactor(store, policy, engine, batch_size=4)
        assert await reactor.catch_up() == (await store.read_all(filter=ORDERS))[-1].global_position
        assert rows(engine) == {f"o-{n}": n for n in range(25)}
        receipts = await issued(store)
        assert [order for order, _ in receipts] == [f"o-{n}" for n in range(25)]  # in the orders' log order
        assert policy.batches == [4, 4, 4, 4, 4, 4, 1]

    async def test_a_restart_continues_from_the_checkpoint(self, store: EventStore, engine: Engine) -> None:
        await place(store, range(10))
        await Reactor(store, Receipts(), engine, batch_size=3).catch_up()
        await place(store, range(10, 17))
        second = Receipts()
        await Reactor(store, second, engine, batch_size=3).catch_up()
        assert sum(second.batches) == 7
        assert len(rows(engine)) == 17 and len(await issued(store)) == 17

    async def test_a_crash_between_append_and_checkpoint_doubles_and_loses_nothing(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(12))
        with pytest.raises(Crash):
            await Reactor(CrashAfterAppend(store, crash_on=2), Receipts(), engine, batch_size=5).catch_up()
        assert len(rows(engine)) == 5, "the second batch was appended but not committed"
        assert len(await issued(store)) == 10
        policy = Receipts()
        await Reactor(store, policy, engine, batch_size=5).catch_up()
        assert policy.batches == [5, 2]  # the appended batch is decided again: its receipts are absorbed
        assert rows(engine) == {f"o-{n}": n for n in range(12)}
        assert [order for order, _ in await issued(store)] == [f"o-{n}" for n in range(12)]

    async def test_a_process_killed_between_append_and_checkpoint_doubles_and_loses_nothing(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(40))
        child = subprocess.Popen(  # noqa: ASYNC220 - a real child process is the point: it gets SIGKILLed
            [sys.executable, "-c", CHILD, self.store_url(), self.read_model_url()],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"started"

            async def inside_the_window() -> bool:
                # Receipts appended but not yet committed with the checkpoint: the child sits after an append.
                committed, appended = len(_rows_or_none(engine)), len(await issued(store))
                return committed >= 8 and appended > committed

            await eventually(inside_the_window)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(30)
        assert len(await issued(store)) > len(rows(engine)), (
            "killed outside the window between append and commit"
        )
        await Reactor(store, Receipts(), engine, batch_size=4).catch_up()
        assert rows(engine) == {f"o-{n}": n for n in range(40)}
        assert [order for order, _ in await issued(store)] == [f"o-{n}" for n in range(40)]

    async def test_a_duplicate_delivery_is_reacted_to_once(self, store: EventStore, engine: Engine) -> None:
        await place(store, range(9))
        twice = Duplicating(store)
        reactor = Reactor(twice, Receipts(), engine, batch_size=3, linger=0)
        await reactor.catch_up()
        task = asyncio.create_task(reactor.run())
        await place(store, range(9, 15))
        await reactor.wait_for(await store.head_position(), within=60)
        reactor.stop()
        await task
        assert rows(engine) == {f"o-{n}": n for n in range(15)}
        assert len(await issued(store)) == 15

    async def test_a_poison_event_is_retried_then_parked_and_the_others_go_on(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(20), poison=[7])
        poisoned = (await store.read_all(filter=ORDERS))[7]
        policy = Receipts()
        reactor = Reactor(store, policy, engine, batch_size=5, retry=FAST)
        assert await reactor.catch_up() == (await store.read_all(filter=ORDERS))[-1].global_position
        assert rows(engine) == {f"o-{n}": n for n in range(20) if n != 7}
        [parked] = [from_recorded(e) for e in await store.read_stream(parked_stream("receipts"))]
        assert isinstance(parked, EventParked)
        assert (parked.event_id, parked.global_position, parked.event_type) == (
            str(poisoned.id),
            poisoned.global_position,
            "OrderPlaced",
        )
        assert parked.error_type == "ValueError" and "o-7 cannot be priced" in parked.error
        assert parked.attempts == FAST.park_after
        status = await reactor.status()
        assert (status.parked, status.lag) == (1, 0)
        restarted = Reactor(store, Receipts(), engine, batch_size=5, retry=FAST)
        await restarted.catch_up()
        assert (await restarted.status()).parked == 1
        assert len(await store.read_stream(parked_stream("receipts"))) == 1

    async def test_an_outage_is_waited_out_not_parked(self, store: EventStore, engine: Engine) -> None:
        await place(store, range(8))
        reactor = Reactor(Unreachable(store, failures=4), Receipts(), engine, batch_size=3, retry=FAST)
        await reactor.catch_up()
        assert len(rows(engine)) == 8 and len(await issued(store)) == 8
        status = await reactor.status()
        assert (
            status.parked == 0
            and status.last_error == "cdp.eventlog.port.EventStoreUnavailable: connection refused"
        )

    async def test_when_every_event_fails_the_reactor_halts_instead_of_parking_everything(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(10), poison=range(10))
        halting = RetryPolicy(initial=0.001, maximum=0.01, park_limit=3)
        reactor = Reactor(store, Receipts(), engine, batch_size=4, retry=halting)
        with pytest.raises(ReactorHalted):
            await reactor.catch_up()
        status = await reactor.status()
        assert (status.state, status.parked) == ("failed", 3)

    async def test_follows_live_appends_and_stops_cleanly(self, store: EventStore, engine: Engine) -> None:
        reactor = Reactor(store, Receipts(), engine, batch_size=50)
        task = asyncio.create_task(reactor.run())
        for start in range(0, 30, 10):
            await place(store, range(start, start + 10))
            await reactor.wait_for(await store.head_position(), within=60)
            assert len(rows(engine)) == start + 10
        status = await reactor.status()
        assert (status.state, status.lag) == ("live", 0)
        reactor.stop()
        await asyncio.wait_for(task, 30)
        assert (await reactor.status()).state == "stopped"

    async def test_a_rebuild_reacts_again_and_the_log_absorbs_the_reactions(
        self, store: EventStore, engine: Engine
    ) -> None:
        await place(store, range(11))
        reactor = Reactor(store, Receipts(), engine, batch_size=4)
        await reactor.catch_up()
        head, before = await store.head_position(), rows(engine)
        await reactor.rebuild()
        assert rows(engine) == before
        assert await store.head_position() == head

    async def test_two_runners_on_one_read_model_conflict(self, store: EventStore, engine: Engine) -> None:
        first = Reactor(store, Receipts(delay=0.05), engine, retry=FAST)
        second = Reactor(store, Receipts(delay=0.05), engine, retry=FAST)
        tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        await eventually(lambda: first._state.value == "live" and second._state.value == "live")
        await place(store, range(3))
        done, pending = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        assert "moved under this runner" in str(done.pop().exception())
        for reactor in (first, second):
            reactor.stop()
        await asyncio.gather(*pending)
        assert len(rows(engine)) == 3


def _rows_or_none(engine: Engine) -> list[str]:
    """The read model's rows, or none before the child created the table."""
    try:
        with read_only(engine).connect() as connection:  # a reader never waits for the writer
            return [row[0] for row in connection.execute(text("SELECT order_id FROM reactor_receipts"))]
    except Exception:
        return []
