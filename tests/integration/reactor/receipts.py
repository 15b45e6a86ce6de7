"""A small real reactor for the contract suite: every OrderPlaced gets one ReceiptIssued and one read-model row.

Inserting rows (not upserting them) and appending receipts with ids derived from the order's event make any
double reaction visible: a second row fails its primary key, a second receipt would be a second event.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session

from cdp.eventlog import (
    ALL,
    START,
    AppendResult,
    EventFilter,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamMetadata,
)
from cdp.reactor import Policy, derived_id

ORDERS = EventFilter(event_types=("OrderPlaced",))
RECEIPTS = EventFilter(event_types=("ReceiptIssued",))

metadata = MetaData()
receipts = Table(
    "reactor_receipts",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("amount", Integer, nullable=False),
    Column("receipt_id", String(36), nullable=False),
)


def order(n: int, *, poison: bool = False) -> NewEvent:
    """An order event; a poisoned one cannot be priced (the policy raises on it, every time)."""
    body: dict[str, Any] = {"order": f"o-{n}", "amount": n}
    if poison:
        body["poison"] = True
    return NewEvent("OrderPlaced", json.dumps(body).encode())


async def place(store: EventStore, numbers: range, *, poison: Sequence[int] = ()) -> None:
    """Append the orders, each to its own stream."""
    for n in numbers:
        await store.append(f"order-{n}", [order(n, poison=n in poison)])


class Receipts(Policy):
    """Issues a receipt per order; `delay` slows each batch down (so a test can kill the process mid-way)."""

    name = "receipts"
    filter = ORDERS
    metadata = metadata

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.loads = 0

    async def load(self, position: int) -> None:
        """Count reloads (the reactor reloads after a failed batch)."""
        self.loads += 1

    def decide(self, session: Session, events: Sequence[RecordedEvent], prepared: Any) -> list[StreamAppend]:
        """One receipt event and one row per order."""
        appends = []
        for event in events:
            body = json.loads(event.data)
            if body.get("poison"):
                raise ValueError(f"order {body['order']} cannot be priced")
            receipt = NewEvent(
                "ReceiptIssued",
                json.dumps({"order": body["order"], "source": str(event.id)}).encode(),
                id=derived_id(event.id, "receipt"),
            )
            appends.append(StreamAppend(f"receipt-{body['order']}", [receipt]))
            session.execute(
                receipts.insert().values(
                    order_id=body["order"], amount=body["amount"], receipt_id=str(receipt.id)
                )
            )
        if self.delay:
            threading.Event().wait(self.delay)
        self.batches.append(len(events))
        return appends


def rows(engine: Engine) -> dict[str, int]:
    """The read model: order id → amount."""
    with engine.connect() as connection:
        return {
            order_id: amount
            for order_id, amount in connection.execute(select(receipts.c.order_id, receipts.c.amount))
        }


async def issued(store: EventStore) -> list[tuple[str, int]]:
    """Every receipt in the log, in log order: (order id, global position)."""
    found = await store.read_all(filter=RECEIPTS)
    return [(json.loads(event.data)["order"], event.global_position) for event in found]


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the reactor may catch it)."""


class Delegating(EventStore):
    """An event store that forwards every call to a real one (the base of the faults below)."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        return await self.inner.append(stream, events, expected)

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        return await self.inner.append_many(appends)

    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        return await self.inner.read_stream(stream, from_position, backwards=backwards, limit=limit)

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        return await self.inner.read_all(after, limit=limit, filter=filter)

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        return self.inner.subscribe(after, filter=filter)

    async def delete_stream(self, stream: str) -> None:
        await self.inner.delete_stream(stream)

    async def truncate_stream(self, stream: str, before: int) -> None:
        await self.inner.truncate_stream(stream, before)

    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        await self.inner.set_stream_metadata(stream, metadata)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        return await self.inner.get_stream_metadata(stream)

    async def head_position(self) -> int:
        return await self.inner.head_position()

    async def close(self) -> None:
        """The real store is closed by its owner."""


class CrashAfterAppend(Delegating):
    """The `crash_on`-th append_many is stored, then the process dies before anything else happens."""

    def __init__(self, inner: EventStore, crash_on: int) -> None:
        super().__init__(inner)
        self.calls = 0
        self.crash_on = crash_on

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        results = await self.inner.append_many(appends)
        self.calls += 1
        if self.calls == self.crash_on:
            raise Crash("killed between the append and the checkpoint")
        return results


class SlowAfterAppend(Delegating):
    """Each append_many is stored, then the caller waits `pause` s: a wide window before the commit that follows."""

    def __init__(self, inner: EventStore, pause: float) -> None:
        super().__init__(inner)
        self.pause = pause

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        results = await self.inner.append_many(appends)
        await asyncio.sleep(self.pause)
        return results


class Duplicating(Delegating):
    """Delivers everything twice: pages overlap the previous one, the subscription repeats each event."""

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        page = await self.inner.read_all(after, limit=limit, filter=filter)
        earlier = [
            event
            for event in await self.inner.read_all(START, filter=filter)
            if event.global_position <= after
        ]
        return [*earlier[-2:], *page]

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        return self._twice(after, filter)

    async def _twice(self, after: int, filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        async for event in self.inner.subscribe(after, filter=filter):
            yield event
            yield event


class Unreachable(Delegating):
    """The log is down for the first `failures` appends (the reactor must wait it out, not park anything)."""

    def __init__(self, inner: EventStore, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        if self.failures > 0:
            self.failures -= 1
            raise EventStoreUnavailable("connection refused")
        return await self.inner.append_many(appends)
