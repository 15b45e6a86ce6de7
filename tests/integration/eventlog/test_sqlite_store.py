"""The SQLite adapter against the event store contract, plus what only a shared file can show."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from cdp.eventlog import EventFilter, EventStore, open_event_store
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
