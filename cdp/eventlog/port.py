"""The event log port: the one contract every backend (SQLite, PostgreSQL, KurrentDB) fulfils.

Positions:
- a stream position counts the events of one stream from 0;
- a global position orders every event of the log; it only grows, but need not be dense
  (KurrentDB commit positions jump, deleted events leave holes).
`read_all(after=p)` and `subscribe(after=p)` return events whose global position is strictly greater
than `p`; `START` (-1) means from the very beginning, so a checkpoint is simply the last position seen.
"""

from __future__ import annotations

import abc
import enum
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

START = -1
"""Read or subscribe from before the first event."""
END = 2**62
"""A stream position beyond any stream's last event (read backwards from the end)."""


class ExpectedVersion(enum.Enum):
    """What the appender expects of the stream, besides an exact version (an int)."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"


Expected = ExpectedVersion | int
"""An `ExpectedVersion`, or the exact stream position of the stream's last event."""


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended; `id` makes a retried append idempotent."""

    type: str
    data: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as the log stored it."""

    id: uuid.UUID
    stream: str
    stream_position: int
    global_position: int
    type: str
    data: bytes
    metadata: Mapping[str, str]
    recorded_at: datetime

    @property
    def category(self) -> str:
        """The stream's category: the part of the name before the first '-'."""
        return stream_category(self.stream)


@dataclass(frozen=True)
class AppendResult:
    """Where an append landed: the stream position and global position of its last event."""

    stream_position: int
    global_position: int
    replayed: bool = field(default=False, compare=False)
    """True when every event id was stored already and nothing was written (an idempotent retry); a backend
    that dedupes retries silently (KurrentDB within its window) may report False for such a retry."""


@dataclass(frozen=True)
class StreamAppend:
    """One part of `append_many`: events for one stream, with that stream's expectation."""

    stream: str
    events: Sequence[NewEvent]
    expected: Expected = ExpectedVersion.ANY


@dataclass(frozen=True)
class EventFilter:
    """Selects events by stream category and/or event type; empty tuples select everything."""

    categories: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()

    def matches(self, stream: str, event_type: str) -> bool:
        """Whether an event of `event_type` in `stream` passes the filter."""
        if self.categories and stream_category(stream) not in self.categories:
            return False
        return not self.event_types or event_type in self.event_types


ALL = EventFilter()


@dataclass(frozen=True)
class StreamMetadata:
    """Retention the backend enforces on one stream (None: unlimited)."""

    max_age: timedelta | None = None
    max_count: int | None = None


class EventStoreError(Exception):
    """Base of every error the event log raises."""


class WrongExpectedVersion(EventStoreError):
    """The stream was not in the state the appender expected."""

    def __init__(self, stream: str, expected: Expected, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        shown = expected.value if isinstance(expected, ExpectedVersion) else expected
        super().__init__(
            f"stream {stream!r}: expected {shown}, actual {actual if actual is not None else 'none'}"
        )


class EventIdConflict(EventStoreError):
    """Some event ids of an append are already stored, but not as this very append (a partial overlap)."""


class StreamDeleted(EventStoreError):
    """The stream was deleted for good (tombstoned) and cannot be written again."""


class EventStoreUnavailable(EventStoreError):
    """A transient fault (connection lost, server busy): the caller may retry with backoff."""


class PhysicalEditUnsupported(EventStoreError):
    """The backend cannot delete or rewrite single events (KurrentDB): only whole streams can be removed."""


class EventStore(abc.ABC):
    """An append-only log of events, grouped into streams, totally ordered by global position."""

    @abc.abstractmethod
    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        """Append atomically; a retry of already-stored event ids returns the original result."""

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """Append to several streams; each part succeeds or fails on its own, exactly as `append` would.

        The parts behave as sequential `append` calls in their order: a part sees what the earlier parts of
        the call wrote (two parts for one stream are two appends), and a call's events take global positions
        in part order. A part that fails (wrong expected version, conflicting event ids, a deleted stream)
        comes back as its error and writes nothing; the others are written. A retried call returns the
        original results and writes nothing. Adapters override this to commit every part in one transaction
        (group commit); this default appends the parts one after another. An empty part or stream name
        raises ValueError before anything is written; transient faults (`EventStoreUnavailable`) are raised
        for the whole call.
        """
        check_parts(appends)
        results: list[AppendResult | EventStoreError] = []
        for part in appends:
            try:
                results.append(await self.append(part.stream, part.events, part.expected))
            except EventStoreUnavailable:
                raise
            except EventStoreError as error:
                results.append(error)
        return results

    @abc.abstractmethod
    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream from a stream position (inclusive), forwards or backwards; without a position,
        from its first event forwards or from its last event backwards."""

    @abc.abstractmethod
    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        """Events of the whole log after a global position, in global order."""

    @abc.abstractmethod
    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        """Catch up from a global position, then follow live appends, forever."""

    @abc.abstractmethod
    async def delete_stream(self, stream: str) -> None:
        """Physically remove every event of the stream; later reads do not return them."""

    @abc.abstractmethod
    async def truncate_stream(self, stream: str, before: int) -> None:
        """Physically remove the events of the stream whose stream position is below `before`."""

    async def events_naming(
        self, terms: Sequence[str], *, skip_categories: Sequence[str] = ()
    ) -> list[RecordedEvent]:
        """Every stored event whose stream name or body contains any of `terms`, in global order.

        Terms are plain ASCII substrings (subject ids, profile ids), matched byte for byte against the stream
        name and the event's data; streams whose category is in `skip_categories` are left out. An empty term
        is refused (it would name every event). This default pages through `read_all`, so it sees what
        `read_all` returns (KurrentDB); SQLite, PostgreSQL and the in-memory store search in the database and
        also find events that retention already hides but has not pruned yet.
        """
        needles = naming_terms(terms)
        if not needles:
            return []
        skipped = set(skip_categories)
        found: list[RecordedEvent] = []
        position = START
        while True:
            page = await self.read_all(position, limit=NAMING_PAGE)
            found.extend(e for e in page if e.category not in skipped and names_any(e, needles))
            if len(page) < NAMING_PAGE:
                return found
            position = page[-1].global_position

    async def erase_events(self, changes: Mapping[uuid.UUID, bytes | None]) -> int:
        """Physically delete (None) or rewrite the body of (bytes) stored events, atomically; how many changed.

        An event keeps its id, stream, positions, type, metadata and time; unknown ids are ignored. A deleted
        event leaves a hole, like `truncate_stream`: the stream's version does not change. Later reads and
        subscriptions see the change; the old bytes stay in the backend's files until `reclaim`. This default
        raises `PhysicalEditUnsupported` (KurrentDB can only remove whole streams).
        """
        raise PhysicalEditUnsupported(
            f"{type(self).__name__} cannot delete or rewrite single events; delete or truncate the stream"
        )

    async def reclaim(self) -> bool:
        """Make what was physically removed unrecoverable from the backend's own files, as far as it can.

        True when that is done (SQLite: WAL checkpointed and truncated; PostgreSQL: vacuumed); False when it
        could not be done now (SQLite: readers held the WAL past the wait; retry later) or cannot be done by
        the adapter at all (KurrentDB: removed events stay in its chunks until an operator's scavenge). This
        default has nothing to reclaim (nothing removed lingers in memory).
        """
        return True

    @abc.abstractmethod
    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        """Set the retention the backend enforces on the stream."""

    @abc.abstractmethod
    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        """The retention set on the stream (unlimited when none)."""

    @abc.abstractmethod
    async def head_position(self) -> int:
        """The global position of the newest event, or START when the log is empty."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""


def stream_category(stream: str) -> str:
    """`profile-abc` → `profile`; a stream without '-' is its own category."""
    return stream.split("-", 1)[0]


NAMING_PAGE = 1000
"""Events per `read_all` page in the default `events_naming`."""


def naming_terms(terms: Sequence[str]) -> list[bytes]:
    """The distinct terms of `events_naming` as bytes; ValueError for an empty or non-ASCII term."""
    needles: dict[bytes, None] = {}
    for term in terms:
        if not term or not term.isascii() or not term.isprintable():
            raise ValueError(f"events_naming needs non-empty printable ASCII terms, got {term!r}")
        needles[term.encode("ascii")] = None
    return list(needles)


def names_any(event: RecordedEvent, needles: Sequence[bytes]) -> bool:
    """Whether the event's stream name or body contains one of the (ASCII) needles."""
    stream = event.stream.encode()
    return any(n in stream or n in event.data for n in needles)


def check_parts(appends: Sequence[StreamAppend]) -> None:
    """Raise ValueError if a part has no stream name or no events (a caller's bug, not a per-part failure)."""
    for part in appends:
        if not part.stream:
            raise ValueError("stream name must not be empty")
        if not part.events:
            raise ValueError(f"stream {part.stream!r}: an append needs at least one event")


async def append_all(store: EventStore, appends: Sequence[StreamAppend]) -> list[AppendResult]:
    """`append_many` for callers whose parts must all succeed (deterministic ids make a retry idempotent, so a
    failing part is a bug, not a race): the first part's error is raised."""
    results = await store.append_many(appends)
    failed = next((r for r in results if isinstance(r, EventStoreError)), None)
    if failed is not None:
        raise failed
    return [r for r in results if isinstance(r, AppendResult)]
