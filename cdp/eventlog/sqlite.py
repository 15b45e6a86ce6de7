"""The embedded event store: one SQLite file in WAL mode, shared safely by several OS processes.

sqlite3 calls run on worker threads (one writer connection, reader connections), never on the event loop.
Appends run in `BEGIN IMMEDIATE` transactions, so writers of every process are serialised by SQLite's write
lock: idempotency and expected versions hold across processes, and a global position becomes visible only
after every smaller one has committed, so a tailing reader never skips an event.

Subscribers in other processes learn of a commit from a notification file beside the database
(`events.db-notify`): the writer touches it after every COMMIT, and subscribers watch it with inotify
(`cdp/eventlog/filewatch.py`) instead of polling. Where inotify is unavailable a poller reads
`PRAGMA data_version` every few milliseconds instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from cdp.eventlog.common import (
    ChangeSignal,
    StoredId,
    StreamState,
    check_batch,
    check_expected,
    decode_metadata,
    encode_metadata,
    follow,
    matching_rows,
    metadata_from_columns,
    plan_append_many,
    replayed_result,
)
from cdp.eventlog.filewatch import FileWatch, touch
from cdp.eventlog.port import (
    ALL,
    END,
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
    WrongExpectedVersion,
    check_parts,
    naming_terms,
    stream_category,
)
from cdp.sqlengine import enable_wal, truncate_wal

T = TypeVar("T")

log = structlog.get_logger(__name__)

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]
"""SQLite's `synchronous` levels that are safe in WAL mode (OFF may corrupt the file on a power cut)."""

Wakeup = Literal["auto", "inotify", "poll"]
"""How subscribers learn of other processes' commits: inotify where available, or polling data_version."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    stream_position INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream, stream_position)
);
CREATE INDEX IF NOT EXISTS events_by_category ON events (category, global_position);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    last_position INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0,
    max_age REAL,
    max_count INTEGER
);
"""
"""`recorded_at` is microseconds since the epoch. AUTOINCREMENT keeps a deleted newest position from being
reused, which would hide a later event from a subscriber already past it. `streams.last_position` survives
deletion so stream positions are never reused either."""

_INSERT = (
    "INSERT INTO events (event_id, stream, category, stream_position, type, data, metadata, recorded_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

_LOOKUP_CHUNK = 5000
"""Ids or stream names per `IN (...)` lookup (SQLite allows 32,766 parameters since 3.32)."""

_COLUMNS = (
    "e.event_id, e.stream, e.stream_position, e.global_position, e.type, e.data, e.metadata, e.recorded_at"
)

_VISIBLE = """
    (s.max_count IS NULL OR e.stream_position > s.last_position - s.max_count)
    AND (s.max_age IS NULL OR e.recorded_at >= :now - CAST(s.max_age * 1000000 AS INTEGER))
"""
"""Retention: max_count keeps the newest positions, max_age the recent events (read even before pruning)."""


def _now_us() -> int:
    """Microseconds since the epoch."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _row_to_event(row: tuple[Any, ...]) -> RecordedEvent:
    """A selected `_COLUMNS` row as a RecordedEvent."""
    event_id, stream, stream_position, global_position, type_, data, metadata, recorded_at = row
    return RecordedEvent(
        id=uuid.UUID(bytes=event_id),
        stream=stream,
        stream_position=stream_position,
        global_position=global_position,
        type=type_,
        data=data,
        metadata=decode_metadata(metadata),
        recorded_at=datetime.fromtimestamp(recorded_at / 1_000_000, UTC),
    )


def connect(path: str, busy_timeout: float, synchronous: Synchronous = "FULL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema ensured, folder created.

    FULL fsyncs the WAL at every commit, so an acknowledged append survives a power cut or an OS crash;
    NORMAL syncs only at checkpoints, so those may lose the last commits (an application crash loses nothing
    either way). See docs/eventlog.md for what each costs.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    enable_wal(conn, busy_timeout)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # Deleted rows and freed pages are overwritten with zeros, so an erased body leaves nothing in the file
    # once the WAL is checkpointed (`reclaim`); appends free nothing, so they do not pay for it.
    conn.execute("PRAGMA secure_delete = ON")
    conn.executescript(SCHEMA)
    return conn


# -- statements run on a worker thread, each given that thread's connection ------------------------------


def _append(
    conn: sqlite3.Connection, stream: str, events: Sequence[NewEvent], expected: Expected
) -> AppendResult:
    """Insert the batch in one write transaction; look its ids up only when that fails (a retry?).

    Relying on the UNIQUE event id instead of looking every id up first keeps the common path short.
    """
    for _ in range(3):
        try:
            return _in_write_transaction(conn, _insert_batch, stream, events, expected)
        except WrongExpectedVersion:
            replay = replayed_result(stream, events, _stored(conn, events))
            if replay is None:
                raise
            return replay
        except sqlite3.IntegrityError as error:
            if "event_id" not in str(error):
                raise
            replay = replayed_result(stream, events, _stored(conn, events))
            if replay is not None:
                return replay
            # The clashing events were deleted in between (by another process): try the append again.
    raise EventStoreUnavailable(f"stream {stream!r}: append kept clashing with concurrent deletions")


def _in_write_transaction(conn: sqlite3.Connection, work: Callable[..., T], *args: Any) -> T:
    """Run `work(conn, *args)` inside BEGIN IMMEDIATE … COMMIT, rolling back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _insert_batch(
    conn: sqlite3.Connection, stream: str, events: Sequence[NewEvent], expected: Expected
) -> AppendResult:
    """Check the expected version, insert the events, move the stream's version, prune retention."""
    row = conn.execute(
        "SELECT last_position, deleted, max_age, max_count FROM streams WHERE stream = ?", (stream,)
    ).fetchone()
    last, deleted, max_age, max_count = row if row is not None else (None, 0, None, None)
    check_expected(stream, expected, None if deleted else last)
    start = 0 if last is None else last + 1
    now = _now_us()
    category = stream_category(stream)
    conn.executemany(
        _INSERT,
        [
            (e.id.bytes, stream, category, start + i, e.type, e.data, encode_metadata(e.metadata), now)
            for i, e in enumerate(events)
        ],
    )
    global_last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    new_last = start + len(events) - 1
    conn.execute(
        "INSERT INTO streams (stream, last_position, deleted) VALUES (?, ?, 0)"
        " ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position, deleted = 0",
        (stream, new_last),
    )
    if max_age is not None or max_count is not None:
        _prune(conn, stream, new_last, metadata_from_columns(max_age, max_count), now)
    return AppendResult(stream_position=new_last, global_position=global_last)


def _stored(conn: sqlite3.Connection, events: Sequence[NewEvent], chunk_size: int = 500) -> list[StoredId]:
    """(id, stream, stream position, global position) of the batch's ids already in the log."""
    found: list[StoredId] = []
    ids = [e.id.bytes for e in events]
    for i in range(0, len(ids), chunk_size):
        chunk = ids[i : i + chunk_size]
        rows = conn.execute(
            "SELECT event_id, stream, stream_position, global_position FROM events"
            f" WHERE event_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        found.extend((uuid.UUID(bytes=r[0]), r[1], r[2], r[3]) for r in rows)
    return found


def _append_parts(
    conn: sqlite3.Connection, appends: Sequence[StreamAppend]
) -> list[AppendResult | EventStoreError]:
    """`append_many` inside the caller's write transaction: one id lookup, one stream lookup, one insert."""
    stored = _stored(conn, [e for part in appends for e in part.events], _LOOKUP_CHUNK)
    states, retention = _stream_states(conn, list(dict.fromkeys(part.stream for part in appends)))
    plan = plan_append_many(appends, stored, states)
    if not plan.writes:
        return plan.results([])
    now = _now_us()
    conn.executemany(
        _INSERT,
        [
            (
                w.event.id.bytes,
                w.stream,
                stream_category(w.stream),
                w.stream_position,
                w.event.type,
                w.event.data,
                encode_metadata(w.event.metadata),
                now,
            )
            for w in plan.writes
        ],
    )
    # AUTOINCREMENT under the write lock hands out consecutive positions: the rows end at the last rowid.
    last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    conn.executemany(
        "INSERT INTO streams (stream, last_position, deleted) VALUES (?, ?, 0)"
        " ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position, deleted = 0",
        list(plan.versions.items()),
    )
    for stream, version in plan.versions.items():
        if stream in retention:
            _prune(conn, stream, version, retention[stream], now)
    return plan.results(range(last - len(plan.writes) + 1, last + 1))


def _stream_states(
    conn: sqlite3.Connection, streams: Sequence[str]
) -> tuple[dict[str, StreamState], dict[str, StreamMetadata]]:
    """The existing streams' versions, and the retention of those that have one."""
    states: dict[str, StreamState] = {}
    retention: dict[str, StreamMetadata] = {}
    for i in range(0, len(streams), _LOOKUP_CHUNK):
        chunk = streams[i : i + _LOOKUP_CHUNK]
        rows = conn.execute(
            "SELECT stream, last_position, deleted, max_age, max_count FROM streams"
            f" WHERE stream IN ({','.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        for stream, last, deleted, max_age, max_count in rows:
            states[stream] = StreamState(last, bool(deleted))
            if max_age is not None or max_count is not None:
                retention[stream] = metadata_from_columns(max_age, max_count)
    return states, retention


def _prune(
    conn: sqlite3.Connection, stream: str, last: int | None, metadata: StreamMetadata, now: int
) -> None:
    """Physically delete the events retention already hides from readers."""
    if metadata.max_count is not None and last is not None:
        conn.execute(
            "DELETE FROM events WHERE stream = ? AND stream_position <= ?",
            (stream, last - metadata.max_count),
        )
    if metadata.max_age is not None:
        cutoff = now - int(metadata.max_age.total_seconds() * 1_000_000)
        conn.execute("DELETE FROM events WHERE stream = ? AND recorded_at < ?", (stream, cutoff))


def _read_stream(
    conn: sqlite3.Connection, stream: str, from_position: int | None, backwards: bool, limit: int | None
) -> list[RecordedEvent]:
    """One stream's visible events from a position (None: from its first or last), in either direction."""
    bound, order = ("<=", "DESC") if backwards else (">=", "ASC")
    if from_position is None:
        from_position = END if backwards else 0
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events e LEFT JOIN streams s ON s.stream = e.stream"
        f" WHERE e.stream = :stream AND e.stream_position {bound} :from AND {_VISIBLE}"
        f" ORDER BY e.stream_position {order} LIMIT :limit",
        {"stream": stream, "from": from_position, "now": _now_us(), "limit": -1 if limit is None else limit},
    ).fetchall()
    return [_row_to_event(r) for r in rows]


def _read_page(
    conn: sqlite3.Connection, after: int, limit: int | None, event_filter: EventFilter
) -> tuple[list[RecordedEvent], int]:
    """Visible events after `after` (one snapshot), and the global position examined up to."""
    conn.execute("BEGIN")
    try:
        ceiling = _highest_allocated(conn)
        where, params = _filter_sql(event_filter)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM events e LEFT JOIN streams s ON s.stream = e.stream"
            f" WHERE e.global_position > :after AND e.global_position <= :ceiling{where} AND {_VISIBLE}"
            " ORDER BY e.global_position LIMIT :limit",
            {
                "after": after,
                "ceiling": ceiling,
                "now": _now_us(),
                "limit": -1 if limit is None else limit,
                **params,
            },
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    events = [_row_to_event(r) for r in rows]
    full = limit is not None and len(events) == limit
    return events, events[-1].global_position if full else max(after, ceiling)


def _highest_allocated(conn: sqlite3.Connection) -> int:
    """The highest global position ever assigned, deleted or not (START before the first append)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row is not None else START


def _filter_sql(event_filter: EventFilter) -> tuple[str, dict[str, str]]:
    """An `AND ...` clause and its parameters selecting the filter's categories and event types."""
    clause, params = "", {}
    if event_filter.categories:
        names = [f":c{i}" for i in range(len(event_filter.categories))]
        clause += f" AND e.category IN ({', '.join(names)})"
        params.update({n[1:]: c for n, c in zip(names, event_filter.categories, strict=True)})
    if event_filter.event_types:
        names = [f":t{i}" for i in range(len(event_filter.event_types))]
        clause += f" AND e.type IN ({', '.join(names)})"
        params.update({n[1:]: t for n, t in zip(names, event_filter.event_types, strict=True)})
    return clause, params


def _delete_stream(conn: sqlite3.Connection, stream: str) -> None:
    """Delete the stream's events; mark it deleted so the next append counts it as new."""
    conn.execute("DELETE FROM events WHERE stream = ?", (stream,))
    conn.execute("UPDATE streams SET deleted = 1 WHERE stream = ?", (stream,))


def _truncate_stream(conn: sqlite3.Connection, stream: str, before: int) -> None:
    """Delete the stream's events below a stream position."""
    conn.execute("DELETE FROM events WHERE stream = ? AND stream_position < ?", (stream, before))


_NAMING_PAGE = 20_000
"""Rows per page scanned by `events_naming` (~10 MB of bodies at 500 bytes each)."""


def _events_naming(
    conn: sqlite3.Connection, needles: Sequence[bytes], skip_categories: Sequence[str]
) -> list[RecordedEvent]:
    """Every stored event whose stream or body contains a needle: page through the raw rows, then fetch hits.

    Faster than `instr` in SQL for more than one term (SQLite's instr compares byte by byte: 1M bodies of
    500 bytes take ~1.5 s per term), and nothing is decoded but the hits. Each page is its own snapshot, so
    the scan never holds the WAL against a checkpoint for long.
    """
    skip = "".join(f", {_quote(c)}" for c in skip_categories)
    where = f" AND category NOT IN ({skip[2:]})" if skip else ""
    hits: list[int] = []
    after = START
    while True:
        rows = conn.execute(
            f"SELECT global_position, stream, data FROM events WHERE global_position > ?{where}"
            " ORDER BY global_position LIMIT ?",
            (after, _NAMING_PAGE),
        ).fetchall()
        hits.extend(matching_rows(rows, needles))
        if len(rows) < _NAMING_PAGE:
            break
        after = rows[-1][0]
    found: list[RecordedEvent] = []
    for i in range(0, len(hits), _LOOKUP_CHUNK):
        chunk = hits[i : i + _LOOKUP_CHUNK]
        found.extend(
            _row_to_event(r)
            for r in conn.execute(
                f"SELECT {_COLUMNS} FROM events e WHERE e.global_position IN ({','.join('?' * len(chunk))})"
                " ORDER BY e.global_position",
                chunk,
            )
        )
    return found


def _quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _erase_events(conn: sqlite3.Connection, changes: Mapping[uuid.UUID, bytes | None]) -> int:
    """Delete or rewrite the bodies of the given events (inside the caller's write transaction)."""
    before = conn.total_changes
    conn.executemany(
        "DELETE FROM events WHERE event_id = ?", [(i.bytes,) for i, body in changes.items() if body is None]
    )
    conn.executemany(
        "UPDATE events SET data = ? WHERE event_id = ?",
        [(body, i.bytes) for i, body in changes.items() if body is not None],
    )
    return conn.total_changes - before


def _checkpoint(conn: sqlite3.Connection, wait: float) -> bool:
    """Copy the whole WAL into the database and truncate it; False when readers still hold it after `wait`."""
    busy, _, _ = truncate_wal(conn, int(wait * 1000))
    return busy == 0


def _set_metadata(conn: sqlite3.Connection, stream: str, metadata: StreamMetadata) -> None:
    """Store the stream's retention and prune what it already hides."""
    age = metadata.max_age.total_seconds() if metadata.max_age is not None else None
    conn.execute(
        "INSERT INTO streams (stream, max_age, max_count) VALUES (?, ?, ?)"
        " ON CONFLICT (stream) DO UPDATE SET max_age = excluded.max_age, max_count = excluded.max_count",
        (stream, age, metadata.max_count),
    )
    last = conn.execute("SELECT last_position FROM streams WHERE stream = ?", (stream,)).fetchone()[0]
    _prune(conn, stream, last, metadata, _now_us())


def _get_metadata(conn: sqlite3.Connection, stream: str) -> StreamMetadata:
    """The stream's retention (unlimited when unset)."""
    row = conn.execute("SELECT max_age, max_count FROM streams WHERE stream = ?", (stream,)).fetchone()
    return metadata_from_columns(*row) if row is not None else StreamMetadata()


def _head(conn: sqlite3.Connection) -> int:
    """The newest stored global position."""
    value = conn.execute("SELECT max(global_position) FROM events").fetchone()[0]
    return START if value is None else int(value)


def _data_version(conn: sqlite3.Connection) -> int:
    """A counter that changes whenever another connection (of any process) commits."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


# -- the adapter -------------------------------------------------------------------------------------------


class SQLiteEventStore(EventStore):
    """The event log in one SQLite file; every process opening the same file sees one log.

    `synchronous`: FULL (default) makes every acknowledged write survive a power cut; NORMAL is faster for
    single-event commits but a power cut may lose the last ones. `backstop`: seconds an idle subscriber
    waits before re-reading anyway, in case a wake-up was lost. `wakeup`: how other processes' commits are
    noticed (`auto`: inotify where available, else polling `PRAGMA data_version` every `poll_interval`).
    `reclaim_timeout`: seconds `reclaim` keeps retrying while other connections hold read snapshots.
    """

    def __init__(
        self,
        path: str,
        *,
        readers: int = 1,
        busy_timeout: float = 30.0,
        synchronous: Synchronous = "FULL",
        backstop: float = 1.0,
        wakeup: Wakeup = "auto",
        poll_interval: float = 0.005,
        reclaim_timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self._path = path
        self._notify_path = f"{path}-notify"
        self._busy_timeout = busy_timeout
        self._synchronous: Synchronous = synchronous
        self._backstop = backstop
        self._wakeup = wakeup
        self._poll_interval = poll_interval
        self._reclaim_timeout = reclaim_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writer = self._executor(1, "eventlog-sqlite-writer")
        self._readers = self._executor(readers, "eventlog-sqlite-reader")
        self._poll_thread: ThreadPoolExecutor | None = None
        self._signal = ChangeSignal()
        self._watch: FileWatch | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    def _executor(self, workers: int, name: str) -> ThreadPoolExecutor:
        """Worker threads, each opening its own connection on first use."""
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def _thread_connection(self) -> sqlite3.Connection:
        """The current worker thread's connection, opened on its first use (a failure is retried next call)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, self._busy_timeout, self._synchronous)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    async def _run(self, executor: ThreadPoolExecutor, work: Callable[..., T], *args: Any) -> T:
        """Run `work(connection, *args)` on a worker thread, mapping lock timeouts to EventStoreUnavailable."""
        if self._closed:
            raise EventStoreError("the event store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self._call, work, args)
        except sqlite3.OperationalError as error:
            raise EventStoreUnavailable(f"sqlite event store {self._path!r}: {error}") from error

    def _call(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Called on the worker thread."""
        return work(self._thread_connection(), *args)

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        """Run a write on the writer thread; once it has committed, wake subscribers here and elsewhere."""
        result: T = await self._run(self._writer, self._committed, work, *args)
        self._signal.notify()
        return result

    def _committed(self, conn: sqlite3.Connection, work: Callable[..., T], *args: Any) -> T:
        """On the writer thread: `work`, then touch the notification file, strictly after its COMMIT.

        Touching only after COMMIT returned means a woken subscriber's next read sees the new events.
        """
        result = work(conn, *args)
        try:
            touch(self._notify_path)
        except OSError as error:  # the write is committed: report success; watchers re-read at their backstop
            log.warning("eventlog_notify_failed", path=self._notify_path, error=str(error))
        return result

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        """Append atomically; a retry of already-stored event ids returns the original result."""
        check_batch(stream, events)
        return await self._write(_append, stream, events, expected)

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """Every part in one write transaction (one writer-thread hop); each part succeeds or fails alone."""
        check_parts(appends)
        if not appends:
            return []
        results: list[AppendResult | EventStoreError] = await self._write(
            _in_write_transaction, _append_parts, appends
        )
        return results

    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream from a stream position (inclusive), forwards or backwards."""
        return await self._run(self._readers, _read_stream, stream, from_position, backwards, limit)

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        """Events of the whole log after a global position, in global order."""
        events, _ = await self._page(after, limit, filter)
        return events

    async def _page(
        self, after: int, limit: int | None, event_filter: EventFilter
    ) -> tuple[list[RecordedEvent], int]:
        """One page of read_all plus the position examined up to."""
        return await self._run(self._readers, _read_page, after, limit, event_filter)

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        """Catch up from a global position, then follow live appends (this process's and others')."""
        return self._follow(after, filter)

    async def _follow(self, after: int, event_filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        """The subscription generator; watches for other processes' commits before its first read.

        No wake-up is lost: the watch exists before the first read, each read is preceded by arming the
        signal (`follow`), and writers touch the file only after COMMIT. So a commit either precedes the
        arming (the read sees it) or its touch comes after it (the armed wait ends). The backstop re-read
        covers writers that do not touch the file (another SQLite client) and a watch that broke.
        """
        if self._closed:
            raise EventStoreError("the event store is closed")
        self._watch_other_processes()
        async for event in follow(self._page, self._signal, after, event_filter, backstop=self._backstop):
            yield event

    def _watch_other_processes(self) -> None:
        """One watch per store and event loop, shared by all its subscribers: inotify, else the poller."""
        loop = asyncio.get_running_loop()
        if self._watch is not None and self._watch.loop is loop:
            return
        if self._poller is not None and not self._poller.done() and self._poller.get_loop() is loop:
            return
        if self._watch is not None:  # a previous event loop's watch
            self._watch.close()
            self._watch = None
        if self._wakeup != "poll":
            self._watch = FileWatch.start(self._notify_path, self._signal.notify)
        if self._watch is None:
            if self._wakeup == "inotify":
                raise EventStoreError("inotify is not available here")
            self._poller = loop.create_task(self._poll())

    async def _poll(self) -> None:
        """Notify subscribers whenever `PRAGMA data_version` moves (any other connection committed)."""
        if self._poll_thread is None:
            self._poll_thread = self._executor(1, "eventlog-sqlite-poller")
        seen = await self._run(self._poll_thread, _data_version)
        # A commit between a subscriber's first read and this baseline would never move the counter
        # again: wake everyone once, now that every later commit will.
        self._signal.notify()
        while not self._closed:
            await asyncio.sleep(self._poll_interval)
            current = await self._run(self._poll_thread, _data_version)
            if current != seen:
                seen = current
                self._signal.notify()

    @property
    def wakeup(self) -> str:
        """How this store currently hears of other processes' commits: `inotify`, `poll` or `none` yet."""
        if self._watch is not None:
            return "inotify"
        return "poll" if self._poller is not None and not self._poller.done() else "none"

    async def delete_stream(self, stream: str) -> None:
        """Delete every event of the stream; a later append restarts it after its old last position."""
        await self._write(_in_write_transaction, _delete_stream, stream)

    async def truncate_stream(self, stream: str, before: int) -> None:
        """Delete the events of the stream whose stream position is below `before`."""
        await self._write(_truncate_stream, stream, before)

    async def events_naming(
        self, terms: Sequence[str], *, skip_categories: Sequence[str] = ()
    ) -> list[RecordedEvent]:
        """Every stored event (hidden by retention or not) whose stream name or body contains a term."""
        needles = naming_terms(terms)
        if not needles:
            return []
        return await self._run(self._readers, _events_naming, needles, list(skip_categories))

    async def erase_events(self, changes: Mapping[uuid.UUID, bytes | None]) -> int:
        """Delete or rewrite the body of stored events in one write transaction; how many were changed."""
        if not changes:
            return 0
        changed: int = await self._write(_in_write_transaction, _erase_events, dict(changes))
        self._signal.edited()
        return changed

    async def reclaim(self) -> bool:
        """Checkpoint the WAL into the file and truncate it (secure_delete already zeroed what was deleted).

        Other connections' read snapshots (of any process) keep the WAL alive, so this retries for up to
        `reclaim_timeout` seconds, letting this store's writes through between attempts; False (and a
        warning) if the WAL could not be truncated by then.
        """
        deadline = time.monotonic() + self._reclaim_timeout
        attempts = 0
        while True:
            attempts += 1
            wait = max(0.0, min(0.2, deadline - time.monotonic()))
            if await self._run(self._writer, _checkpoint, wait):
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "eventlog_reclaim_incomplete",
                    path=self._path,
                    attempts=attempts,
                    reason="other connections kept reading the WAL; erased bytes may remain in it",
                )
                return False
            await asyncio.sleep(0.05)

    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        """Set the retention enforced on reads, and prune what it already hides."""
        await self._write(_in_write_transaction, _set_metadata, stream, metadata)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        """The retention set on the stream (unlimited when none)."""
        return await self._run(self._readers, _get_metadata, stream)

    async def head_position(self) -> int:
        """The global position of the newest stored event, or START when the log is empty."""
        return await self._run(self._readers, _head)

    async def close(self) -> None:
        """Stop watching, wake subscribers, let workers finish, close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.close()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._signal.notify()
        for executor in (self._writer, self._readers, self._poll_thread):
            if executor is not None:
                await asyncio.to_thread(executor.shutdown, wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
