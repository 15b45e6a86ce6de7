"""The in-memory adapter against the event store contract, and the port's default `append_many` too."""

from __future__ import annotations

from collections.abc import Sequence

from cdp.eventlog import (
    AppendResult,
    EventStore,
    EventStoreError,
    RecordedEvent,
    StreamAppend,
    open_event_store,
)
from cdp.eventlog.memory import InMemoryEventStore

from .contract import EventStoreContract


class TestInMemoryEventStore(EventStoreContract):
    """Every contract test on a fresh in-memory store."""

    durable = False

    async def open_store(self) -> EventStore:
        """A new, empty in-memory store."""
        return open_event_store("memory://")


class _SequentialAppendMany(InMemoryEventStore):
    """The in-memory store with the port's defaults KurrentDB uses: `append_many` part by part, and
    `events_naming` paging through `read_all`."""

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """The port's default implementation."""
        return await EventStore.append_many(self, appends)

    async def events_naming(
        self, terms: Sequence[str], *, skip_categories: Sequence[str] = ()
    ) -> list[RecordedEvent]:
        """The port's default implementation."""
        return await EventStore.events_naming(self, terms, skip_categories=skip_categories)


class TestDefaultAppendMany(EventStoreContract):
    """The contract holds for the default `append_many` too, so adapters that keep it stay correct."""

    durable = False

    async def open_store(self) -> EventStore:
        """A new, empty store whose append_many appends part by part."""
        return _SequentialAppendMany()
