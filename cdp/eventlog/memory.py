"""An in-memory event store for unit tests and demos: same semantics as the durable adapters, no I/O."""

from __future__ import annotations

import bisect
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cdp.eventlog.common import (
    AppendPlan,
    ChangeSignal,
    StreamState,
    first_visible_position,
    follow,
    oldest_visible_time,
    plan_append_many,
)
from cdp.eventlog.port import (
    ALL,
    END,
    START,
    AppendResult,
    EventFilter,
    EventStore,
    EventStoreError,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamMetadata,
    check_parts,
    names_any,
    naming_terms,
)


@dataclass
class _Stream:
    """One stream's state; `last_position` survives a deletion so positions are never reused."""

    last_position: int | None = None
    exists: bool = False
    metadata: StreamMetadata = field(default_factory=StreamMetadata)
    events: list[RecordedEvent] = field(default_factory=list)

    @property
    def version(self) -> int | None:
        """The version an appender's expectation is checked against (None: no stream)."""
        return self.last_position if self.exists else None


class InMemoryEventStore(EventStore):
    """Keeps the log in lists; every operation completes without awaiting, so it is trivially serial."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._log: list[RecordedEvent] = []
        self._positions: list[int] = []
        self._ids: dict[uuid.UUID, RecordedEvent] = {}
        self._next_global = 0
        self._signal = ChangeSignal()
        self._closed = False

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        """Append atomically; a retry of already-stored event ids returns the original result."""
        (outcome,) = self._append_many([StreamAppend(stream, events, expected)])
        if isinstance(outcome, EventStoreError):
            raise outcome
        return outcome

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """Append every part at once (nothing awaits in between); each part succeeds or fails on its own."""
        return self._append_many(appends)

    def _append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """The work of `append` and `append_many`: plan every part against the current state, then record."""
        self._check_open()
        check_parts(appends)
        stored = [
            (r.id, r.stream, r.stream_position, r.global_position)
            for part in appends
            for e in part.events
            if (r := self._ids.get(e.id))
        ]
        streams = {
            part.stream: StreamState(state.last_position, deleted=not state.exists)
            for part in appends
            if (state := self._streams.get(part.stream)) is not None
        }
        plan = plan_append_many(appends, stored, streams)
        recorded = self._record(plan)
        if recorded:
            self._signal.notify()
        return plan.results([r.global_position for r in recorded])

    def _record(self, plan: AppendPlan) -> list[RecordedEvent]:
        """Store the planned events at the next global positions."""
        now = datetime.now(UTC)
        recorded = [
            RecordedEvent(
                w.event.id,
                w.stream,
                w.stream_position,
                self._next_global + i,
                w.event.type,
                w.event.data,
                dict(w.event.metadata),
                now,
            )
            for i, w in enumerate(plan.writes)
        ]
        self._next_global += len(recorded)
        for event in recorded:
            state = self._streams.setdefault(event.stream, _Stream())
            state.last_position, state.exists = event.stream_position, True
            state.events.append(event)
        self._log.extend(recorded)
        self._positions.extend(r.global_position for r in recorded)
        self._ids.update((r.id, r) for r in recorded)
        return recorded

    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream from a stream position (inclusive), forwards or backwards."""
        self._check_open()
        state = self._streams.get(stream)
        if state is None:
            return []
        visible = [e for e in state.events if self._visible(e, state, datetime.now(UTC))]
        if from_position is None:
            from_position = END if backwards else 0
        if backwards:
            selected = [e for e in reversed(visible) if e.stream_position <= from_position]
        else:
            selected = [e for e in visible if e.stream_position >= from_position]
        return selected if limit is None else selected[:limit]

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        """Events of the whole log after a global position, in global order."""
        events, _ = await self._page(after, limit, filter)
        return events

    async def _page(
        self, after: int, limit: int | None, event_filter: EventFilter
    ) -> tuple[list[RecordedEvent], int]:
        """Matching events after `after`, and the position examined up to."""
        self._check_open()
        now = datetime.now(UTC)
        selected: list[RecordedEvent] = []
        examined = max(after, self._positions[-1] if self._positions else START)
        for event in self._log[bisect.bisect_right(self._positions, after) :]:
            if event_filter.matches(event.stream, event.type) and self._visible(
                event, self._streams[event.stream], now
            ):
                selected.append(event)
                if limit is not None and len(selected) >= limit:
                    return selected, event.global_position
        return selected, examined

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        """Catch up from a global position, then follow live appends, forever."""
        return follow(self._page, self._signal, after, filter)

    async def delete_stream(self, stream: str) -> None:
        """Remove every event of the stream; a later append recreates it after the old last position."""
        self._check_open()
        state = self._streams.get(stream)
        if state is None:
            return
        self._forget(state.events)
        state.events, state.exists = [], False

    async def truncate_stream(self, stream: str, before: int) -> None:
        """Remove the events of the stream whose stream position is below `before`."""
        self._check_open()
        state = self._streams.get(stream)
        if state is None:
            return
        self._forget([e for e in state.events if e.stream_position < before])
        state.events = [e for e in state.events if e.stream_position >= before]

    def _forget(self, events: list[RecordedEvent]) -> None:
        """Drop events from the global log and the id index."""
        gone = {e.global_position for e in events}
        if not gone:
            return
        for event in events:
            del self._ids[event.id]
        self._log = [e for e in self._log if e.global_position not in gone]
        self._positions = [e.global_position for e in self._log]

    async def events_naming(
        self, terms: Sequence[str], *, skip_categories: Sequence[str] = ()
    ) -> list[RecordedEvent]:
        """Every stored event (hidden by retention or not) whose stream name or body contains a term."""
        self._check_open()
        needles = naming_terms(terms)
        skipped = set(skip_categories)
        return [e for e in self._log if needles and e.category not in skipped and names_any(e, needles)]

    async def erase_events(self, changes: Mapping[uuid.UUID, bytes | None]) -> int:
        """Delete (None) or rewrite the body of stored events at once; how many were changed."""
        self._check_open()
        known = {event_id: self._ids[event_id] for event_id in changes if event_id in self._ids}
        if not known:
            return 0
        gone = [event for event_id, event in known.items() if changes[event_id] is None]
        rewritten = {
            event_id: dataclasses.replace(event, data=body)
            for event_id, event in known.items()
            if (body := changes[event_id]) is not None
        }
        self._forget(gone)
        for event in gone:
            state = self._streams[event.stream]
            state.events = [e for e in state.events if e.id != event.id]
        if rewritten:
            self._log = [rewritten.get(e.id, e) for e in self._log]
            self._ids.update(rewritten)
            for stream in {e.stream for e in rewritten.values()}:
                state = self._streams[stream]
                state.events = [rewritten.get(e.id, e) for e in state.events]
        self._signal.edited()
        return len(known)

    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        """Set the retention enforced on the stream's reads."""
        self._check_open()
        self._streams.setdefault(stream, _Stream()).metadata = metadata

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        """The retention set on the stream (unlimited when none)."""
        self._check_open()
        state = self._streams.get(stream)
        return state.metadata if state is not None else StreamMetadata()

    async def head_position(self) -> int:
        """The global position of the newest stored event, or START when the log is empty."""
        self._check_open()
        return self._positions[-1] if self._positions else START

    async def close(self) -> None:
        """Mark the store closed and wake subscribers."""
        self._closed = True
        self._signal.notify()

    @staticmethod
    def _visible(event: RecordedEvent, state: _Stream, now: datetime) -> bool:
        """Whether the stream's max_count / max_age let readers see the event."""
        if event.stream_position < first_visible_position(state.last_position, state.metadata):
            return False
        cutoff = oldest_visible_time(state.metadata, now)
        return cutoff is None or event.recorded_at >= cutoff

    def _check_open(self) -> None:
        """Refuse use after close()."""
        if self._closed:
            raise EventStoreError("the event store is closed")
