"""Group commit: many concurrent callers share one `append_many`, so one transaction carries many requests.

There is no artificial delay. While a commit is in flight, new requests queue; when it finishes, everything
queued goes in the next commit. At low load a request commits alone and at once; under load the batches grow
by themselves, which is what keeps per-request latency low and throughput near the log's bulk-insert ceiling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from cdp.eventlog.port import AppendResult, EventStore, EventStoreError, StreamAppend, check_parts

Outcome = AppendResult | EventStoreError


@dataclass
class _Request:
    parts: Sequence[StreamAppend]
    done: asyncio.Future[list[Outcome]]


class GroupCommitter:
    """Shares commits between concurrent callers of `append`; start it with `run()` as a background task."""

    def __init__(self, store: EventStore, *, max_events: int = 5000) -> None:
        self._store = store
        self._max_events = max_events
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.commits = 0
        self.events = 0

    async def append(self, parts: Sequence[StreamAppend]) -> list[Outcome]:
        """Append the parts in the next shared commit; one outcome per part, as `append_many` gives."""
        if not parts:
            return []
        check_parts(parts)  # a malformed request fails alone, never the commit it would have shared
        done: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(parts, done))
        return await done

    async def run(self) -> None:
        """Commit queued requests until cancelled; a request in flight when cancelled still gets its answer."""
        while True:
            batch = [await self._queue.get()]
            size = sum(len(part.events) for part in batch[0].parts)
            while size < self._max_events and not self._queue.empty():
                request = self._queue.get_nowait()
                batch.append(request)
                size += sum(len(part.events) for part in request.parts)
            await asyncio.shield(self._commit(batch))

    async def _commit(self, batch: list[_Request]) -> None:
        parts = [part for request in batch for part in request.parts]
        try:
            outcomes = await self._store.append_many(parts)
        except Exception as error:
            for request in batch:
                if not request.done.done():
                    request.done.set_exception(error)
            return
        self.commits += 1
        self.events += sum(len(part.events) for part in parts)
        start = 0
        for request in batch:
            end = start + len(request.parts)
            if not request.done.done():
                request.done.set_result(outcomes[start:end])
            start = end

    def drain(self) -> None:
        """Fail whatever is still queued (used at shutdown, after `run` was cancelled)."""
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.done.done():
                request.done.set_exception(EventStoreError("the service is shutting down"))
