"""The in-memory adapter against the event store contract, and the port's default `append_many` too."""

from __future__ import annotations

from collections.abc import Sequence

from cdp.eventlog import AppendResult, EventStore, EventStoreError, StreamAppend, open_event_store
from cdp.eventlog.memory import InMemoryEventStore

from .contract import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    """Every contract test on a fresh in-memory store."""

    durable = False

    async def open_store(self) -> EventStore:
        """A new, empty in-memory store."""
        return open_event_store("memory://")


class _SequentialAppendMany(InMemoryEventStore):
    """The in-memory store with the port's default `append_many` (part by part, as KurrentDB uses it)."""

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """The port's default implementation."""
        return await EventStore.append_many(self, appends)


class TestDefaultAppendMany(EventStoreContract):
    """The contract holds for the default `append_many` too, so adapters that keep it stay correct."""

    durable = False

    async def open_store(self) -> EventStore:
        """A new, empty store whose append_many appends part by part."""
        return _SequentialAppendMany()
