"""Subscribers wake on new events without polling: SQLite across processes (inotify), PostgreSQL (NOTIFY).

A subscription built with an hour-long backstop can only receive a live event through a wake-up, so the
tests below that deliver within their (generous) caps prove the wake-up path, and a lost wake-up makes them
time out. None of them measures speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from cdp.eventlog import EventFilter, NewEvent, RecordedEvent
from cdp.eventlog import filewatch as filewatch_module
from cdp.eventlog import sqlite as sqlite_module
from cdp.eventlog.postgres import PostgresEventStore, split_url
from cdp.eventlog.sqlite import SQLiteEventStore, connect

from .contract import new_events, subscription, take

T = TypeVar("T")

HOUR = 3600.0
"""A backstop that never fires during a test: only a wake-up delivers."""

SUBSCRIBER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from cdp.eventlog import EventFilter
    from cdp.eventlog.sqlite import SQLiteEventStore

    async def main(path, category, count):
        store = SQLiteEventStore(path, backstop=3600, wakeup="inotify")
        head = await store.head_position()
        events = store.subscribe(head, filter=EventFilter(categories=(category,)))
        first = asyncio.ensure_future(anext(events))
        while store.wakeup != "inotify":  # the watch exists before the subscription's first read
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        received = [await first]
        while len(received) < count:
            received.append(await anext(events))
        for event in received:
            print(event.data.decode(), flush=True)
        await events.aclose()
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)

WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from cdp.eventlog import NewEvent
    from cdp.eventlog.sqlite import SQLiteEventStore

    async def main(path, stream, rounds):
        store = SQLiteEventStore(path)
        for i in range(rounds):
            size = 1 + i % 5
            await store.append(stream, [NewEvent("Remote", f"{i}-{j}".encode()) for j in range(size)])
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


class CountingSQLiteStore(SQLiteEventStore):
    """The real SQLite store, counting its trips to worker threads (every read, every poll)."""

    hops = 0

    async def _run(self, executor: Any, work: Callable[..., T], *args: Any) -> T:
        """Count, then run as usual."""
        self.hops += 1
        return await super()._run(executor, work, *args)


def inotify_descriptors() -> int:
    """How many inotify instances this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning on a core each, stopped afterwards."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def wait_until(condition: Callable[[], bool], seconds: float = 30.0, every: float = 0.01) -> None:
    """Return once `condition()` holds, failing after `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the conditions are other processes' and threads' states
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def waiting_for_more(events: AsyncIterator[RecordedEvent]) -> AsyncIterator[None]:
    """Keep the subscription waiting for its next event (so it runs) for the duration of the block."""
    waiter = asyncio.ensure_future(anext(events))
    try:
        yield
        assert not waiter.done(), "an event arrived in a silent log"
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await waiter


@pytest.fixture
def path(tmp_path: Path) -> str:
    """A fresh database file for each test."""
    return str(tmp_path / "events.db")


@contextlib.asynccontextmanager
async def sqlite_store(path: str, **options: Any) -> AsyncIterator[SQLiteEventStore]:
    """A SQLite store on `path`, closed afterwards."""
    store = SQLiteEventStore(path, **options)
    try:
        yield store
    finally:
        await store.close()


def ordered_and_complete(seen: list[RecordedEvent], expected: list[bytes]) -> bool:
    """Every expected event once, in append order, at increasing global positions."""
    positions = [e.global_position for e in seen]
    return [e.data for e in seen] == expected and all(a < b for a, b in itertools.pairwise(positions))


# -- SQLite --------------------------------------------------------------------------------------------------


async def test_a_subscriber_in_another_process_wakes_on_an_append_here(path: str) -> None:
    async with sqlite_store(path) as store:
        await store.append("warmup-1", new_events(1))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SUBSCRIBER_SCRIPT, path, "live", "3", stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        try:
            async with asyncio.timeout(60):
                assert await child.stdout.readline() == b"ready\n"
                for i in range(3):  # one commit at a time: each needs its own wake-up over there
                    await store.append(f"live-{i}", [NewEvent("Live", f"live{i}".encode())])
                output = await child.stdout.read()
                assert await child.wait() == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert output.split() == [b"live0", b"live1", b"live2"]


@pytest.mark.parametrize("busy", [0, 2], ids=["idle machine", "both cores busy"])
async def test_a_burst_from_another_process_arrives_complete_and_in_order(path: str, busy: int) -> None:
    rounds = 300  # 900 events in 300 commits
    expected = [f"{i}-{j}".encode() for i in range(rounds) for j in range(1 + i % 5)]
    async with sqlite_store(path, backstop=HOUR, wakeup="inotify") as store:
        head = await store.head_position()
        async with subscription(store, head, filter=EventFilter(categories=("remote",))) as events:
            tail = asyncio.create_task(take(events, len(expected), seconds=90))
            await wait_until(lambda: store.wakeup == "inotify")
            with busy_cores(busy):
                writer = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", WRITER_SCRIPT, path, "remote-1", str(rounds)
                )
                assert await writer.wait() == 0
                seen = await tail
    assert ordered_and_complete(seen, expected)


async def test_another_store_on_the_file_wakes_every_subscriber_through_one_watch(path: str) -> None:
    before = inotify_descriptors()
    async with sqlite_store(path, backstop=HOUR) as store, sqlite_store(path) as other:
        head = await store.head_position()
        everything = EventFilter()
        async with (
            subscription(store, head, filter=everything) as first,
            subscription(store, head, filter=everything) as second,
            subscription(store, head, filter=everything) as third,
        ):
            takers = [asyncio.create_task(take(events, 2, seconds=30)) for events in (first, second, third)]
            await wait_until(lambda: store.wakeup == "inotify")
            assert inotify_descriptors() == before + 1
            await other.append("x-1", new_events(1, prefix="a"))
            await other.append("x-1", new_events(1, prefix="b"))
            for taken in await asyncio.gather(*takers):
                assert [e.data for e in taken] == [b"a0", b"b0"]
    assert inotify_descriptors() == before


@pytest.mark.parametrize("replace", ["delete", "rename"])
async def test_a_removed_notification_file_is_watched_again(path: str, replace: str) -> None:
    notify = f"{path}-notify"
    async with sqlite_store(path, backstop=HOUR) as store, sqlite_store(path) as other:
        head = await store.head_position()
        async with subscription(store, head, filter=EventFilter()) as events:
            first = asyncio.create_task(take(events, 1, seconds=30))
            await wait_until(lambda: store.wakeup == "inotify")
            await other.append("x-1", new_events(1, prefix="before"))
            assert [e.data for e in await first] == [b"before0"]
            if replace == "delete":
                os.unlink(notify)
            else:
                os.rename(notify, f"{notify}.old")
            second = asyncio.create_task(take(events, 1, seconds=30))
            await other.append("x-1", new_events(1, prefix="after"))
            assert [e.data for e in await second] == [b"after0"]
            third = asyncio.create_task(take(events, 1, seconds=30))
            await other.append("x-1", new_events(1, prefix="later"))  # the new file is the one watched
            assert [e.data for e in await third] == [b"later0"]
    assert os.stat(notify).st_size == 0


async def test_an_idle_subscriber_reads_only_at_its_backstop(path: str) -> None:
    async with sqlite_store(path) as writer:
        await writer.append("x-1", new_events(1))
    store = CountingSQLiteStore(path)  # the default backstop: one re-read per second of silence
    try:
        async with subscription(store, -1, filter=EventFilter()) as events:
            assert len(await take(events, 1)) == 1
            assert store.wakeup == "inotify"
            store.hops = 0
            async with waiting_for_more(events):
                # An observation window, not a wait for a condition: a loaded machine can only read less.
                await asyncio.sleep(2.5)
            assert 1 <= store.hops <= 3, f"{store.hops} reads in 2.5 s of silence (backstop 1 s)"
    finally:
        await store.close()


async def test_without_inotify_the_poller_wakes_subscribers(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filewatch_module, "_LIBC", None)  # as on a system without inotify
    async with (
        sqlite_store(path, backstop=HOUR) as store,
        sqlite_store(path) as other,
        subscription(store, -1, filter=EventFilter()) as events,
    ):
        taken = asyncio.create_task(take(events, 1, seconds=30))
        await wait_until(lambda: store.wakeup == "poll")
        await other.append("x-1", new_events(1))
        assert len(await taken) == 1
    assert inotify_descriptors() == 0


class LatePollerStore(SQLiteEventStore):
    """The real SQLite store whose poller takes its first data_version only once `gate` is set (a slow thread)."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.gate = asyncio.Event()
        self.reads = 0

    async def _run(self, executor: Any, work: Callable[..., T], *args: Any) -> T:
        """Hold the poller's first call until the gate opens; count completed page reads."""
        if work is sqlite_module._data_version and not self.gate.is_set():
            await self.gate.wait()
        result = await super()._run(executor, work, *args)
        self.reads += work is sqlite_module._read_page
        return result


async def test_a_commit_before_the_poller_starts_is_not_missed(path: str) -> None:
    store = LatePollerStore(path, backstop=HOUR, wakeup="poll")
    try:
        async with sqlite_store(path) as other, subscription(store, -1, filter=EventFilter()) as events:
            taken = asyncio.create_task(take(events, 1, seconds=30))
            await wait_until(lambda: store.reads == 1)  # the first read is over and found nothing
            assert store.wakeup == "poll" and not taken.done()
            await other.append("x-1", new_events(1))  # after that read, before the poller's baseline
            store.gate.set()
            assert len(await taken) == 1
    finally:
        await store.close()


def test_the_log_syncs_every_commit_unless_told_otherwise(path: str) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteEventStore(path, synchronous="OFF")  # type: ignore[arg-type]
    for level, expected in ((None, 2), ("NORMAL", 1), ("FULL", 2)):
        conn = connect(path, 30.0) if level is None else connect(path, 30.0, level)  # type: ignore[arg-type]
        try:
            assert conn.execute("PRAGMA synchronous").fetchone() == (expected,)
        finally:
            conn.close()


# -- PostgreSQL ----------------------------------------------------------------------------------------------


class CountingPostgresStore(PostgresEventStore):
    """The real PostgreSQL store, counting the pages its subscriptions read."""

    pages = 0

    async def _page(self, after: int, limit: int | None, event_filter: EventFilter) -> Any:
        """Count, then read as usual."""
        self.pages += 1
        return await super()._page(after, limit, event_filter)


@pytest.fixture
def postgres_log(postgres_url: str, postgres_schema: str) -> tuple[str, str]:
    """(the URL of a throwaway schema, the URL of the database for inspecting sessions)."""
    separator = "&" if "?" in postgres_url else "?"
    return f"{postgres_url}{separator}schema={postgres_schema}", postgres_url


def listener_pids(database: str, schema: str) -> list[int]:
    """Server pids of the sessions listening on the schema's channel."""
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query = %s", (f'LISTEN "cdp_eventlog_{schema}"',)
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.postgres
async def test_an_idle_postgres_subscriber_reads_only_at_its_backstop(
    postgres_log: tuple[str, str], postgres_schema: str
) -> None:
    url, database = postgres_log
    conninfo, schema = split_url(url)
    store = CountingPostgresStore(conninfo, schema=schema)
    try:
        await store.append("x-1", new_events(1))
        async with subscription(store, -1, filter=EventFilter()) as events:
            assert len(await take(events, 1)) == 1
            await wait_until(lambda: len(listener_pids(database, postgres_schema)) == 1, every=0.1)
            store.pages = 0
            async with waiting_for_more(events):
                await asyncio.sleep(3.0)  # an observation window: a loaded machine can only read less
            assert store.pages <= 2, f"{store.pages} reads in 3 s of silence (backstop {store.backstop} s)"
    finally:
        await store.drop_schema()
        await store.close()


@pytest.mark.postgres
async def test_a_postgres_subscriber_survives_its_listener_being_killed(
    postgres_log: tuple[str, str], postgres_schema: str
) -> None:
    url, database = postgres_log
    store, other = PostgresEventStore.from_url(url), PostgresEventStore.from_url(url)
    store.backstop = HOUR
    try:
        await store.head_position()
        async with subscription(store, -1, filter=EventFilter(categories=("x",))) as events:
            first = asyncio.create_task(take(events, 1, seconds=30))
            await wait_until(lambda: len(listener_pids(database, postgres_schema)) == 1, every=0.1)
            await other.append("x-1", new_events(1, prefix="before"))
            assert [e.data for e in await first] == [b"before0"]
            (killed,) = listener_pids(database, postgres_schema)
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (killed,))
            second = asyncio.create_task(take(events, 1, seconds=30))
            await other.append("x-1", new_events(1, prefix="while_down"))  # most likely before it re-listens
            assert [e.data for e in await second] == [b"while_down0"]
            await wait_until(
                lambda: listener_pids(database, postgres_schema) not in ([], [killed]), every=0.1
            )
            third = asyncio.create_task(take(events, 1, seconds=30))
            await other.append("x-1", new_events(1, prefix="after"))
            assert [e.data for e in await third] == [b"after0"]
    finally:
        await other.close()
        await store.drop_schema()
        await store.close()
