"""Following the log live: a subscription pumped into a bounded queue, taken from it in batches."""

from __future__ import annotations

import asyncio
from typing import Any

from cdp.eventlog.port import EventFilter, EventStore, EventStoreUnavailable, RecordedEvent

Item = RecordedEvent | BaseException
"""What the queue carries: events, then the failure that ended the subscription (after the events before it)."""


async def pump(store: EventStore, after: int, event_filter: EventFilter, queue: asyncio.Queue[Item]) -> None:
    """Move subscription events into the queue; a failure travels the same way."""
    try:
        async for recorded in store.subscribe(after, filter=event_filter):
            await queue.put(recorded)
        await queue.put(EventStoreUnavailable("the subscription ended"))
    except asyncio.CancelledError:
        raise
    except Exception as error:
        await queue.put(error)


async def next_batch(
    queue: asyncio.Queue[Item], stopping: asyncio.Task[Any], *, size: int, linger: float
) -> list[Item]:
    """Wait for one item (or the stop request), linger for others to join it, then take up to `size`."""
    getter = asyncio.create_task(queue.get())
    await asyncio.wait({getter, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        await asyncio.gather(getter, return_exceptions=True)  # stopping: whatever it held is read again
        return []
    batch = [getter.result()]
    if linger and not isinstance(batch[0], BaseException) and queue.qsize() < size:
        await asyncio.wait({stopping}, timeout=linger)
    while len(batch) < size and not queue.empty() and not isinstance(batch[-1], BaseException):
        batch.append(queue.get_nowait())
    return batch
