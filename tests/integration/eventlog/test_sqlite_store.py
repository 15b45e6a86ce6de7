"""The SQLite adapter against the event store contract, plus what only a shared file can show."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cdp.eventlog import EventFilter, EventStore, NewEvent, open_event_store
from cdp.eventlog.sqlite import SQLiteEventStore

from .contract import EventStoreContract, new_events, subscription, take

WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from cdp.eventlog import NewEvent, open_event_store

    async def main(url, stream, rounds):
        store = open_event_store(url)
        for i in range(rounds):
            size = 1 + i % 5
            await store.append(stream, [NewEvent("Remote", f"p{i}-{j}".encode()) for j in range(size)])
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@contextmanager
def reader_holding_a_snapshot(path: Path, seconds: float) -> Iterator[None]:
    """Another connection with a read transaction open for `seconds` (it keeps the WAL from being reset)."""
    started = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*), sum(length(data)) FROM events").fetchone()
        started.set()
        threading.Event().wait(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait()
    try:
        yield
    finally:
        thread.join()


def files_containing(path: Path, secret: bytes) -> list[str]:
    """Which of the database's files (main, -wal, -shm, -notify) hold `secret` anywhere in their bytes."""
    files = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-notify"))]
    return [f.name for f in files if f.exists() and secret in f.read_bytes()]


class TestSQLiteEventStore(EventStoreContract):
    """Every contract test on a fresh SQLite file."""

    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        """Each test gets its own database file."""
        self.path = tmp_path / "events.db"

    async def open_store(self) -> EventStore:
        """A new store instance on this test's file."""
        return open_event_store(f"sqlite:///{self.path}")

    async def writer_stores(self, store: EventStore, count: int) -> list[EventStore]:
        """Separate instances, hence separate writer connections, on the same file."""
        return [store, *[await self.open_store() for _ in range(count - 1)]]

    async def test_another_process_writing_is_seen_by_a_tailing_subscriber(self, store: EventStore) -> None:
        head = await store.head_position()
        remote = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER_SCRIPT, f"sqlite:///{self.path}", "remote-1", "200"
        )
        async with subscription(store, head, filter=EventFilter(categories=("remote", "local"))) as events:
            tail = asyncio.create_task(take(events, 600 + 30, seconds=60))
            for round_ in range(10):
                await store.append("local-1", [*new_events(3, prefix=f"r{round_}-")])
            assert await remote.wait() == 0
            seen = await tail
        positions = [e.global_position for e in seen]
        assert positions == sorted(set(positions))
        assert len([e for e in seen if e.stream == "remote-1"]) == 600
        assert len([e for e in seen if e.stream == "local-1"]) == 30

    async def test_cross_process_idempotency_and_expected_version(self, store: EventStore) -> None:
        batch = new_events(2)
        original = await store.append("shared-1", batch)
        other = SQLiteEventStore(str(self.path))
        try:
            assert await other.append("shared-1", batch) == original
            assert len(await other.read_stream("shared-1")) == 2
        finally:
            await other.close()

    async def test_the_url_names_a_relative_or_absolute_file(self) -> None:
        store = open_event_store(f"sqlite:///{self.path}")
        assert isinstance(store, SQLiteEventStore)
        await store.append("x-1", new_events(1))
        assert self.path.exists()
        await store.close()

    async def test_a_missing_folder_is_created_on_first_use(self, tmp_path: Path) -> None:
        store = SQLiteEventStore(str(tmp_path / "new" / "folder" / "events.db"))
        try:
            await store.append("x-1", new_events(1))
            assert (tmp_path / "new" / "folder" / "events.db").exists()
        finally:
            await store.close()

    async def test_an_unopenable_file_is_reported_and_retried(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        store = SQLiteEventStore(str(blocker / "events.db"))
        try:
            with pytest.raises(OSError):
                await store.head_position()
            blocker.unlink()
            assert await store.head_position() == -1
        finally:
            await store.close()

    async def test_erased_bodies_leave_no_byte_in_any_file(self, store: EventStore) -> None:
        secret = f"erase-me-{uuid.uuid4().hex}"
        person = [
            NewEvent("Tracked", f'{{"who":"{secret}","pad":"{"x" * (i * 97 % 6000)}"}}'.encode())
            for i in range(60)
        ]
        shared = [
            NewEvent("Listed", f'{{"people":["{secret}","someone-else"],"i":{i}}}'.encode())
            for i in range(20)
        ]
        others = [
            NewEvent("Tracked", f'{{"who":"other-{i}","pad":"{"y" * 900}"}}'.encode()) for i in range(300)
        ]
        await store.append("person-p1", person[:30])
        await store.append("shared-1", shared)
        await store.append("other-1", others)
        await store.append("person-p1", person[30:])
        assert isinstance(store, SQLiteEventStore)
        assert files_containing(self.path, secret.encode())
        with reader_holding_a_snapshot(self.path, 1.0):
            await store.delete_stream("person-p1")
            naming = await store.events_naming([secret])
            assert [e.stream for e in naming] == ["shared-1"] * 20
            changes: dict[uuid.UUID, bytes | None] = {
                e.id: e.data.replace(f'"{secret}",'.encode(), b"") for e in naming
            }
            assert await store.erase_events(changes) == 20
            assert await store.reclaim()
        assert files_containing(self.path, secret.encode()) == []
        assert self.path.with_name("events.db-wal").stat().st_size == 0
        assert [e.data for e in await store.read_stream("other-1")] == [e.data for e in others]
        first_shared = (await store.read_stream("shared-1", limit=1))[0]
        assert first_shared.data == b'{"people":["someone-else"],"i":0}'
        assert await store.events_naming([secret]) == []

    async def test_reclaim_gives_up_while_a_reader_keeps_the_wal(self) -> None:
        store = SQLiteEventStore(str(self.path), reclaim_timeout=0.5)
        try:
            events = new_events(3)
            await store.append("x-1", events)
            with reader_holding_a_snapshot(self.path, 1.5):
                await store.erase_events({events[0].id: None})
                assert await store.reclaim() is False
                await store.append("x-1", new_events(1, prefix="during"))  # writes were not blocked
            assert await store.reclaim() is True
        finally:
            await store.close()

    async def test_every_connection_deletes_securely(self, store: EventStore) -> None:
        assert isinstance(store, SQLiteEventStore)
        await store.append("x-1", new_events(1))
        await store.read_stream("x-1")
        with store._connections_lock:
            modes = [conn.execute("PRAGMA secure_delete").fetchone()[0] for conn in store._connections]
        assert modes == [1, 1]
