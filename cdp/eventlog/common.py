"""Rules every adapter shares: expected-version checks, idempotency, retention, the subscription loop."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson

from cdp.eventlog.port import (
    AppendResult,
    EventFilter,
    EventIdConflict,
    EventStoreError,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamMetadata,
    WrongExpectedVersion,
)

__all__ = [  # EventIdConflict moved to the port; importing it from here keeps working
    "AppendPlan",
    "ChangeSignal",
    "EventIdConflict",
    "PlannedEvent",
    "StoredId",
    "StreamState",
    "check_batch",
    "check_expected",
    "decode_metadata",
    "encode_metadata",
    "first_visible_position",
    "follow",
    "matching_rows",
    "metadata_from_columns",
    "oldest_visible_time",
    "plan_append_many",
    "replayed_result",
]

StoredId = tuple[uuid.UUID, str, int, int]
"""An event id already in the log: (id, stream, stream position, global position)."""


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
    stream: str, events: Sequence[NewEvent], stored: Sequence[StoredId]
) -> AppendResult | None:
    """Decide idempotency from the stored (id, stream, stream position, global position) of the batch's ids.

    None when no id is stored (a fresh append); the original result when the whole batch is stored in
    `stream` in the same order at consecutive positions (a retry); otherwise EventIdConflict.
    """
    known = {row[0]: _Known(row[1], row[2], row[3]) for row in stored}
    last = _replayed(stream, events, known)
    if last is None:
        return None
    assert last.global_position is not None  # every stored id has one
    return AppendResult(last.stream_position, last.global_position, replayed=True)


class _Known(NamedTuple):
    """Where an event id is: stored before the call (global position known) or written by it (`write`)."""

    stream: str
    stream_position: int
    global_position: int | None = None
    write: int = -1


def _replayed(stream: str, events: Sequence[NewEvent], known: Mapping[uuid.UUID, _Known]) -> _Known | None:
    """The last event of an exact replay, None for fresh ids, EventIdConflict for anything in between."""
    found = [known.get(e.id) for e in events]
    if all(entry is None for entry in found):
        return None
    first = found[0]
    consistent = first is not None and all(
        entry is not None and entry.stream == stream and entry.stream_position == first.stream_position + i
        for i, entry in enumerate(found)
    )
    if not consistent:
        raise EventIdConflict(
            f"stream {stream!r}: some event ids of this append are already stored elsewhere"
        )
    return found[-1]


@dataclass(frozen=True)
class StreamState:
    """A stream as `append_many` finds it; `last_position` survives deletion so positions are never reused."""

    last_position: int | None = None
    deleted: bool = False

    @property
    def version(self) -> int | None:
        """The version an expectation is checked against (None: no stream)."""
        return None if self.deleted else self.last_position


class PlannedEvent(NamedTuple):
    """An event `append_many` will write, at this stream position (a tuple: plans hold thousands)."""

    stream: str
    stream_position: int
    event: NewEvent


@dataclass
class AppendPlan:
    """What one `append_many` call writes (in global order) and each part's outcome."""

    writes: list[PlannedEvent] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    """Each written stream's new last position."""
    outcomes: list[AppendResult | EventStoreError | None] = field(default_factory=list)
    pending: dict[int, int] = field(default_factory=dict)
    """Part index → index in `writes` of the event whose positions are the part's result."""
    echoes: set[int] = field(default_factory=set)
    """Parts that repeat the events of an earlier part of the same call: they write nothing (replayed)."""

    def results(self, global_positions: Sequence[int]) -> list[AppendResult | EventStoreError]:
        """Every part's outcome, given the global positions the writes received (in `writes` order)."""
        if len(global_positions) != len(self.writes):
            raise EventStoreError(f"{len(self.writes)} events written, {len(global_positions)} positions")
        results: list[AppendResult | EventStoreError] = []
        for index, outcome in enumerate(self.outcomes):
            if outcome is None:
                write = self.pending[index]
                position = self.writes[write].stream_position
                outcome = AppendResult(position, global_positions[write], replayed=index in self.echoes)
            results.append(outcome)
        return results


def plan_append_many(
    appends: Sequence[StreamAppend], stored: Sequence[StoredId], streams: Mapping[str, StreamState]
) -> AppendPlan:
    """Decide every part as a sequential `append` would, given the call's ids already stored and its streams.

    `stored` must hold every id of the call that is in the log; `streams` every stream of the call that
    exists (missing ones are new). A part sees the writes of the parts before it.
    """
    known = {row[0]: _Known(row[1], row[2], row[3]) for row in stored}
    states = dict(streams)
    plan = AppendPlan()
    for index, part in enumerate(appends):
        written = len(plan.writes)
        try:
            last = _plan_part(plan, part, known, states)
        except (EventIdConflict, WrongExpectedVersion) as error:
            plan.outcomes.append(error)
            continue
        if last.global_position is None:
            plan.pending[index] = last.write
            plan.outcomes.append(None)
            if len(plan.writes) == written:
                plan.echoes.add(index)
        else:
            plan.outcomes.append(AppendResult(last.stream_position, last.global_position, replayed=True))
    return plan


def _plan_part(
    plan: AppendPlan, part: StreamAppend, known: dict[uuid.UUID, _Known], states: dict[str, StreamState]
) -> _Known:
    """Check one part; add its events to the plan unless it replays stored ones. Its last event's place."""
    check_batch(part.stream, part.events)
    replay = _replayed(part.stream, part.events, known)
    if replay is not None:
        return replay
    state = states.get(part.stream, StreamState())
    check_expected(part.stream, part.expected, state.version)
    start = 0 if state.last_position is None else state.last_position + 1
    for i, event in enumerate(part.events):
        known[event.id] = _Known(part.stream, start + i, write=len(plan.writes))
        plan.writes.append(PlannedEvent(part.stream, start + i, event))
    last = start + len(part.events) - 1
    states[part.stream] = StreamState(last)
    plan.versions[part.stream] = last
    return known[part.events[-1].id]


def matching_rows(rows: Sequence[tuple[int, str, bytes]], needles: Sequence[bytes]) -> list[int]:
    """The positions of the (position, stream, data) rows whose stream or data contains a needle.

    The rows' names and bodies are joined, NUL-separated (a needle is printable, so no match spans two
    rows), and each needle is found with `bytes.find` (C, ~3 GB/s here): a few dozen needles over a page of
    rows cost a few dozen scans instead of a Python call per row and needle.
    """
    found: set[int] = set()
    for haystacks in ([r[1].encode() for r in rows], [r[2] for r in rows]):
        joined = b"\0".join(haystacks)
        starts = list(itertools.accumulate((len(h) + 1 for h in haystacks), initial=0))
        for needle in needles:
            at = joined.find(needle)
            while at >= 0:
                row = bisect.bisect_right(starts, at) - 1
                found.add(row)
                at = joined.find(needle, starts[row + 1])
    return [rows[i][0] for i in sorted(found)]


_JSON = json.JSONEncoder(separators=(",", ":"))
"""One encoder: `json.dumps` with options builds a new one per call, a third of its cost."""


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """Metadata as compact JSON text (encoded once per event)."""
    return _JSON.encode(dict(metadata)) if metadata else "{}"


def decode_metadata(text: str | None) -> Mapping[str, str]:
    """The inverse of encode_metadata (read for every event: orjson, unless it refuses the text)."""
    if not text or text == "{}":
        return {}
    try:
        decoded: Mapping[str, str] = orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an escaped lone surrogate, which json accepts
        return json.loads(text)  # type: ignore[no-any-return]
    return decoded


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
        self.edits = 0
        """Bumped by every in-process `erase_events`: a subscription drops the rest of a page read before."""

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

    def edited(self) -> None:
        """Stored events were erased or rewritten: pages read before must not be delivered any more."""
        self.edits += 1
        self.notify()


ReadPage = Callable[[int, int, EventFilter], Awaitable[tuple[list[RecordedEvent], int]]]
"""(after, limit, filter) → (matching events, the global position the page has examined up to)."""


async def follow(
    read_page: ReadPage,
    signal: ChangeSignal,
    after: int,
    event_filter: EventFilter,
    *,
    page_size: int = 1000,
    backstop: float = 1.0,
) -> AsyncIterator[RecordedEvent]:
    """Catch up page by page, then wait for a change signal (or `backstop` seconds) and read again.

    The signal is armed before each read, so a notify() sent after a commit became visible either precedes
    the arming (the read sees the commit) or ends the wait. The backstop only covers a notification that
    never came (a writer that does not notify, a broken watch or listener).

    An `erase_events` of this process (`signal.edited()`) makes it drop the rest of a page read before the
    erasure and read again after the last event delivered, so it never delivers an erased or rewritten body
    it had read earlier. An erasure by another process is not signalled: the rest of one page read before it
    may still be delivered with the old bodies.
    """
    position = after
    while True:
        armed = signal.arm()
        edits = signal.edits
        events, examined = await read_page(position, page_size, event_filter)
        for event in events:
            if signal.edits != edits:
                break
            yield event
            position = event.global_position
        else:
            position = max(position, examined)
            if len(events) < page_size:
                await _wait(armed, backstop)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event` at most `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
