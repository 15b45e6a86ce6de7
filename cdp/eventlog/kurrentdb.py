"""The KurrentDB (EventStoreDB) event store, through kurrentdbclient's async gRPC client.

Mapping: our stream position is KurrentDB's stream revision; our global position is the event's commit
position in `$all` (gRPC appends give every event its own commit position, so they are unique and grow).
Deletion is KurrentDB's soft delete; truncation and retention are the `$tb`, `$maxCount` and `$maxAge`
stream metadata. KurrentDB hides those events from stream reads at once but keeps them in `$all` until a
scavenge, so reads of `$all` here check each stream's first visible revision and drop what it hides.

`append_many` keeps the port's default (one `append_to_stream` per part, in order) on purpose. The
client's `multi_append_to_stream` (KurrentDB 25.1+) does not fit the per-part contract: it is all or
nothing (one failing expectation aborts every stream), refuses two parts for the same stream
(`MultiAppendToSameStreamError`), and answers with one position for the whole transaction, not each
part's revision and commit position.

NOTE: no KurrentDB server was available while this adapter was written; it type-checks against
kurrentdbclient 1.3.5 but has never been run. The contract suite runs it when CDP_TEST_KURRENTDB is set.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kurrentdbclient import AsyncKurrentDBClient, StreamState
from kurrentdbclient import NewEvent as KurrentNewEvent
from kurrentdbclient import RecordedEvent as KurrentRecordedEvent
from kurrentdbclient.exceptions import (
    AbortedByServerError,
    DeadlineExceededError,
    GrpcError,
    NodeIsNotLeaderError,
    NotFoundError,
    ServiceUnavailableError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

from cdp.eventlog.common import check_batch, decode_metadata, encode_metadata, replayed_result
from cdp.eventlog.port import (
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
    StreamDeleted,
    StreamMetadata,
    WrongExpectedVersion,
)

log = structlog.get_logger(__name__)

_STATES = {
    ExpectedVersion.ANY: StreamState.ANY,
    ExpectedVersion.NO_STREAM: StreamState.NO_STREAM,
    ExpectedVersion.STREAM_EXISTS: StreamState.EXISTS,
}

_DROPPED = (ServiceUnavailableError, DeadlineExceededError, AbortedByServerError, NodeIsNotLeaderError)
"""Errors that end a subscription for reasons a later resubscription overcomes (projections retry these)."""

_RETRY_SCAN = 10_000
"""How far back a stream is searched for a batch's ids when the server reports a wrong version."""


def _to_kurrent(event: NewEvent) -> KurrentNewEvent:
    """Our event as the client's NewEvent (data is opaque bytes; metadata is JSON)."""
    return KurrentNewEvent(
        type=event.type,
        data=event.data,
        metadata=encode_metadata(event.metadata).encode(),
        content_type="application/octet-stream",
        id=event.id,
    )


def _from_kurrent(event: KurrentRecordedEvent) -> RecordedEvent:
    """The client's RecordedEvent as ours."""
    return RecordedEvent(
        id=event.id,
        stream=event.stream_name,
        stream_position=event.stream_position,
        global_position=event.commit_position,
        type=event.type,
        data=event.data,
        metadata=decode_metadata(event.metadata.decode() if event.metadata else None),
        recorded_at=event.recorded_at or datetime.now(UTC),
    )


def _filter_args(event_filter: EventFilter) -> dict[str, Any]:
    """Server-side filter arguments: by stream name when categories are given, else by event type."""
    if event_filter.categories:
        names = "|".join(re.escape(c) for c in event_filter.categories)
        return {"filter_include": (f"(?:{names})(?:-.*)?",), "filter_by_stream_name": True}
    if event_filter.event_types:
        types = "|".join(re.escape(t) for t in event_filter.event_types)
        return {"filter_include": (f"(?:{types})",), "filter_by_stream_name": False}
    return {}


class _Visibility:
    """Each stream's lowest revision a stream read still returns (deletion, $tb, $maxCount, $maxAge)."""

    def __init__(self, client: AsyncKurrentDBClient, ttl: float) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[str, tuple[float, int | None]] = {}

    async def visible(self, event: RecordedEvent) -> bool:
        """Whether a stream read would still return the event (None: the stream has nothing visible)."""
        first = await self._first_visible(event.stream)
        return first is not None and event.stream_position >= first

    async def _first_visible(self, stream: str) -> int | None:
        """The cached or freshly read first visible revision of the stream."""
        cached = self._cache.get(stream)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            events = await self._client.get_stream(stream, limit=1)
            first = events[0].stream_position if events else None
        except (NotFoundError, StreamIsDeletedError):
            first = None
        self._cache[stream] = (time.monotonic(), first)
        return first


class KurrentDBEventStore(EventStore):
    """The event log in a KurrentDB node or cluster; `url` is a kurrentdb:// connection string."""

    def __init__(self, url: str, *, page_size: int = 1000, visibility_ttl: float = 1.0) -> None:
        self._client = AsyncKurrentDBClient(url)
        self._page_size = page_size
        self._visibility_ttl = visibility_ttl
        self._connected = False

    async def _ready(self) -> AsyncKurrentDBClient:
        """The connected client (connects on first use)."""
        if not self._connected:
            try:
                await self._client.connect()
            except (ServiceUnavailableError, DeadlineExceededError) as error:
                raise EventStoreUnavailable(f"kurrentdb: {error}") from error
            self._connected = True
        return self._client

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        """Append atomically; the server dedupes recent retries, a retry after a wrong version is looked up."""
        check_batch(stream, events)
        client = await self._ready()
        version = expected if isinstance(expected, int) else _STATES[expected]
        try:
            commit = await client.append_to_stream(
                stream, events=[_to_kurrent(e) for e in events], current_version=version
            )
        except WrongCurrentVersionError as error:
            return await self._retried_or_raise(stream, events, expected, error)
        except StreamIsDeletedError as error:
            raise StreamDeleted(f"stream {stream!r} is tombstoned") from error
        except (ServiceUnavailableError, DeadlineExceededError) as error:
            raise EventStoreUnavailable(f"kurrentdb: {error}") from error
        return AppendResult(await self._revision_of(stream, events[-1].id, len(events)), commit)

    async def _retried_or_raise(
        self, stream: str, events: Sequence[NewEvent], expected: Expected, error: WrongCurrentVersionError
    ) -> AppendResult:
        """The original result when this batch is already stored (a retry), else WrongExpectedVersion."""
        stored = await self._find(stream, {e.id for e in events})
        replay = replayed_result(stream, events, stored)
        if replay is not None:
            return replay
        actual = error.actual_version
        raise WrongExpectedVersion(stream, expected, actual if isinstance(actual, int) else None) from error

    async def _find(self, stream: str, ids: set[uuid.UUID]) -> list[tuple[uuid.UUID, str, int, int]]:
        """(id, stream, revision, commit position) of the given ids among the stream's latest events."""
        try:
            recent = await self._client.get_stream(stream, backwards=True, limit=_RETRY_SCAN)
        except NotFoundError:
            return []
        return [(e.id, stream, e.stream_position, e.commit_position) for e in recent if e.id in ids]

    async def _revision_of(self, stream: str, event_id: uuid.UUID, count: int) -> int:
        """The revision the append gave its last event (the append reply carries only the commit position)."""
        recent = await self._client.get_stream(stream, backwards=True, limit=count + 100)
        for event in recent:
            if event.id == event_id:
                return event.stream_position
        raise EventStoreError(f"stream {stream!r}: appended event {event_id} not found right after appending")

    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream from a revision (inclusive), forwards or backwards (None: from either end)."""
        if limit == 0:
            return []
        client = await self._ready()
        try:
            found = await client.get_stream(
                stream, stream_position=from_position, backwards=backwards, limit=limit or 2**62
            )
        except (NotFoundError, StreamIsDeletedError):
            return []
        return [_from_kurrent(e) for e in found]

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        """Events of `$all` after a commit position, filtered on the server, hidden events dropped."""
        client = await self._ready()
        visibility = _Visibility(client, self._visibility_ttl)
        selected: list[RecordedEvent] = []
        position = after
        while limit is None or len(selected) < limit:
            page, full = await self._read_all_page(client, position, filter)
            for event in page:
                position = event.global_position
                if await self._passes(event, filter, visibility):
                    selected.append(event)
            if not full:
                break
        return selected if limit is None else selected[:limit]

    async def _read_all_page(
        self, client: AsyncKurrentDBClient, after: int, event_filter: EventFilter
    ) -> tuple[list[RecordedEvent], bool]:
        """User events after a commit position (the server includes `after` itself), and whether more may follow."""
        commit = None if after == START else after
        response = await client.read_all(
            commit_position=commit, limit=self._page_size, **_filter_args(event_filter)
        )
        raw = [e async for e in response]
        events = [_from_kurrent(e) for e in raw if not e.is_system_event and e.commit_position > after]
        return events, len(raw) == self._page_size

    @staticmethod
    async def _passes(event: RecordedEvent, event_filter: EventFilter, visibility: _Visibility) -> bool:
        """The filter (checked here too: the server filters on one attribute only) and visibility."""
        return event_filter.matches(event.stream, event.type) and await visibility.visible(event)

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        """A catch-up subscription to `$all` from a commit position, filtered on the server."""
        return self._follow(after, filter)

    async def _follow(self, after: int, event_filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        """The subscription generator; a dropped subscription raises EventStoreUnavailable (resubscribe)."""
        client = await self._ready()
        visibility = _Visibility(client, self._visibility_ttl)
        commit = None if after == START else after
        try:
            async with await client.subscribe_to_all(
                commit_position=commit, **_filter_args(event_filter)
            ) as events:
                async for raw in events:
                    event = _from_kurrent(raw)
                    if raw.is_system_event or event.global_position <= after:
                        continue
                    if await self._passes(event, event_filter, visibility):
                        yield event
        except _DROPPED as error:  # a restart, a leader change, a slow consumer: the caller retries
            raise EventStoreUnavailable(f"kurrentdb subscription dropped: {error}") from error

    async def delete_stream(self, stream: str) -> None:
        """Soft-delete: reads stop returning the events; a later append restarts after the old revision."""
        client = await self._ready()
        try:
            await client.delete_stream(stream, current_version=StreamState.ANY)
        except NotFoundError:
            return

    async def truncate_stream(self, stream: str, before: int) -> None:
        """Set `$tb`, hiding the revisions below `before` (removed at the next scavenge)."""
        await self._update_metadata(stream, {"$tb": before})

    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        """Set `$maxAge` (whole seconds) and `$maxCount`, keeping the stream's other metadata."""
        age = None if metadata.max_age is None else max(1, int(metadata.max_age.total_seconds()))
        await self._update_metadata(stream, {"$maxAge": age, "$maxCount": metadata.max_count})

    async def _update_metadata(self, stream: str, changes: dict[str, Any]) -> None:
        """Merge keys into the stream's metadata (None removes a key), guarded by the metadata version."""
        client = await self._ready()
        current, version = await client.get_stream_metadata(stream)
        merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
        await client.set_stream_metadata(stream, metadata=merged, current_version=version)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        """`$maxAge` and `$maxCount` of the stream (unlimited when unset)."""
        client = await self._ready()
        current, _ = await client.get_stream_metadata(stream)
        age = current.get("$maxAge")
        return StreamMetadata(
            max_age=None if age is None else timedelta(seconds=age), max_count=current.get("$maxCount")
        )

    async def reclaim(self) -> bool:
        """Nothing this client can do: deleted and truncated events stay in the server's chunk files (and
        in `$all`) until an operator runs a scavenge, so this logs that and answers False.

        `erase_events` is the port's default (`PhysicalEditUnsupported`): KurrentDB cannot delete or rewrite
        single events, only whole streams (`delete_stream`) or their beginnings (`truncate_stream`).
        """
        log.warning(
            "eventlog_reclaim_needs_scavenge", reason="KurrentDB removes deleted events at a scavenge"
        )
        return False

    async def head_position(self) -> int:
        """The commit position of the newest user event, or START."""
        client = await self._ready()
        position = await client.get_commit_position()
        return position if position > 0 else START

    async def close(self) -> None:
        """Close the gRPC channel."""
        with contextlib.suppress(GrpcError):
            await self._client.close()
