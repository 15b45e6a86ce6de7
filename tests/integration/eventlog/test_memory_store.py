"""The in-memory adapter against the event store contract."""

from __future__ import annotations

from cdp.eventlog import EventStore, open_event_store

from .contract import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    """Every contract test on a fresh in-memory store."""

    durable = False

    async def open_store(self) -> EventStore:
        """A new, empty in-memory store."""
        return open_event_store("memory://")
