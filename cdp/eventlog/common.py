"""Rules every adapter shares: expected-version checks, idempotency, retention, the subscription loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta

from cdp.eventlog.port import (
    AppendResult,
    EventFilter,
    EventStoreError,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamMetadata,
    WrongExpectedVersion,
)


class EventIdConflict(EventStoreError):
    """Some event ids of an append are already stored, but not as this very append (a partial overlap)."""


def check_batch(stream: str, events: Sequence[NewEvent]) -> None:
    """Reject an empty append or one that repeats an event id."""
    if not stream:
        raise ValueError("stream name must not be empty")
    if not events:
        raise ValueError("an append needs at least one event")
    if len({e.id for e in events}) != len(events):
        raise EventIdConflict(f"stream {stream!r}: the same event id appears twice in one append")


def check_expected(stream: str, expected: Expected, current: int | None) -> None:
    """Raise WrongExpectedVersion unless `current` (None: no stream) satisfies `expected`."""
    if expected is ExpectedVersion.ANY:
        return
    if expected is ExpectedVersion.NO_STREAM:
        ok = current is None
    elif expected is ExpectedVersion.STREAM_EXISTS:
        ok = current is not None
    else:
        ok = current == expected
    if not ok:
        raise WrongExpectedVersion(stream, expected, current)


def replayed_result(
    stream: str, events: Sequence[NewEvent], stored: Sequence[tuple[uuid.UUID, str, int, int]]
) -> AppendResult | None:
    """Decide idempotency from the stored (id, stream, stream position, global position) of the batch's ids.

    None when no id is stored (a fresh append); the original result when the whole batch is stored in
    `stream` in the same order at consecutive positions (a retry); otherwise EventIdConflict.
    """
    if not stored:
        return None
    by_id = {row[0]: row for row in stored}
    rows = [by_id.get(e.id) for e in events]
    first = rows[0]
    consistent = first is not None and all(
        row is not None and row[1] == stream and row[2] == first[2] + i for i, row in enumerate(rows)
    )
    if not consistent:
        raise EventIdConflict(
            f"stream {stream!r}: some event ids of this append are already stored elsewhere"
        )
    last = rows[-1]
    assert last is not None  # consistent implies every row is present
    return AppendResult(stream_position=last[2], global_position=last[3])


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """Metadata as compact JSON text (encoded once per event)."""
    return json.dumps(dict(metadata), separators=(",", ":")) if metadata else "{}"


def decode_metadata(text: str | None) -> Mapping[str, str]:
    """The inverse of encode_metadata."""
    return json.loads(text) if text and text != "{}" else {}


def first_visible_position(version: int | None, metadata: StreamMetadata) -> int:
    """The lowest stream position `max_count` still lets readers see."""
    if metadata.max_count is None or version is None:
        return 0
    return max(0, version - metadata.max_count + 1)


def oldest_visible_time(metadata: StreamMetadata, now: datetime) -> datetime | None:
    """Events recorded before this instant are hidden by `max_age` (None: no age limit)."""
    return None if metadata.max_age is None else now - metadata.max_age


def metadata_from_columns(max_age_seconds: float | None, max_count: int | None) -> StreamMetadata:
    """Stream metadata from stored (max age in seconds, max count)."""
    age = timedelta(seconds=max_age_seconds) if max_age_seconds is not None else None
    return StreamMetadata(max_age=age, max_count=max_count)


class ChangeSignal:
    """Wakes subscribers when the log may have grown; arm before reading so no wake-up is lost."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self) -> asyncio.Event:
        """The event the next notify() sets; take it before reading the log."""
        loop = asyncio.get_running_loop()
        if self._event is None or self._loop is not loop:  # a store may outlive one event loop
            self._event, self._loop = asyncio.Event(), loop
        return self._event

    def notify(self) -> None:
        """Wake everything armed so far."""
        event, self._event = self._event, None
        if event is not None:
            event.set()


ReadPage = Callable[[int, int, EventFilter], Awaitable[tuple[list[RecordedEvent], int]]]
"""(after, limit, filter) → (matching events, the global position the page has examined up to)."""


async def follow(
    read_page: ReadPage,
    signal: ChangeSignal,
    after: int,
    event_filter: EventFilter,
    *,
    page_size: int = 1000,
    idle_poll: float = 1.0,
) -> AsyncIterator[RecordedEvent]:
    """Catch up page by page, then wait for a change signal (or `idle_poll` seconds) and read again."""
    position = after
    while True:
        armed = signal.arm()
        events, examined = await read_page(position, page_size, event_filter)
        for event in events:
            yield event
        position = max(position, examined)
        if len(events) < page_size:
            await _wait(armed, idle_poll)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event` at most `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
