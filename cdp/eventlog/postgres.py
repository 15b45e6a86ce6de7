"""The PostgreSQL event store: psycopg 3 async, a connection pool, one server-side function per append.

Gap-freedom: every append (and every deletion) takes one transaction-scoped advisory lock before it draws
global positions from the sequence. PostgreSQL makes a commit visible before it releases that transaction's
locks, so the next appender's positions are drawn only after the previous ones are visible: any snapshot
that shows position P shows every committed position below P, and a reader tailing the log never passes
over a position that commits later. Live subscriptions wake on LISTEN/NOTIFY; an idle one re-reads only
every few seconds, a backstop for a listener connection that died unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cdp.eventlog.common import (
    AppendPlan,
    ChangeSignal,
    StreamState,
    check_batch,
    encode_metadata,
    follow,
    matching_rows,
    metadata_from_columns,
    plan_append_many,
)
from cdp.eventlog.port import (
    ALL,
    END,
    START,
    AppendResult,
    EventFilter,
    EventIdConflict,
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
from cdp.sqlengine import DEPENDENCY_TIMEOUT, postgres_timeouts

log = structlog.get_logger(__name__)

BACKSTOP_SECONDS = 5.0
"""An idle subscriber re-reads this often anyway: NOTIFY wakes it, this covers a listener that is down."""

_LISTENER_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalives (kernel timers, no wake-ups here) end a listener whose server vanished within ~60 s."""

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.events (
    global_position BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    stream_position BIGINT NOT NULL,
    type TEXT NOT NULL,
    data BYTEA NOT NULL,
    metadata JSON NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_position)
);
CREATE INDEX IF NOT EXISTS events_by_category ON {s}.events (category, global_position);
CREATE TABLE IF NOT EXISTS {s}.streams (
    stream TEXT PRIMARY KEY,
    last_position BIGINT,
    deleted BOOLEAN NOT NULL DEFAULT false,
    max_age DOUBLE PRECISION,
    max_count BIGINT
);
CREATE OR REPLACE FUNCTION {s}.append_events(
    p_stream TEXT, p_category TEXT, p_expected TEXT, p_version BIGINT, p_lock BIGINT, p_channel TEXT,
    p_ids UUID[], p_types TEXT[], p_data BYTEA[], p_metadata TEXT[]
) RETURNS TABLE (outcome TEXT, stream_position BIGINT, global_position BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_count INT := cardinality(p_ids);
    v_found INT; v_same BOOLEAN; v_pos BIGINT; v_global BIGINT;
    v_last BIGINT; v_deleted BOOLEAN; v_max_age DOUBLE PRECISION; v_max_count BIGINT; v_current BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    -- Idempotency: the whole batch already stored, in order, in this stream → the original result.
    SELECT count(*), bool_and(e.stream = p_stream) AND count(DISTINCT e.stream_position - u.i) = 1,
           max(e.stream_position), max(e.global_position)
      INTO v_found, v_same, v_pos, v_global
      FROM unnest(p_ids) WITH ORDINALITY AS u(id, i) JOIN {s}.events e ON e.event_id = u.id;
    IF v_found > 0 THEN
        IF v_found = v_count AND v_same THEN
            RETURN QUERY SELECT 'replayed'::TEXT, v_pos, v_global;
        ELSE
            RETURN QUERY SELECT 'conflict'::TEXT, NULL::BIGINT, NULL::BIGINT;
        END IF;
        RETURN;
    END IF;
    SELECT s.last_position, s.deleted, s.max_age, s.max_count
      INTO v_last, v_deleted, v_max_age, v_max_count
      FROM {s}.streams s WHERE s.stream = p_stream;
    v_current := CASE WHEN v_deleted THEN NULL ELSE v_last END;
    IF (p_expected = 'no_stream' AND v_current IS NOT NULL)
       OR (p_expected = 'stream_exists' AND v_current IS NULL)
       OR (p_expected = 'exact' AND v_current IS DISTINCT FROM p_version) THEN
        RETURN QUERY SELECT 'wrong_version'::TEXT, v_current, NULL::BIGINT;
        RETURN;
    END IF;
    v_pos := coalesce(v_last + 1, 0);
    WITH inserted AS (
        INSERT INTO {s}.events (event_id, stream, category, stream_position, type, data, metadata)
        SELECT u.id, p_stream, p_category, v_pos + u.i - 1, u.t, u.d, u.m::JSON
          FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS u(id, t, d, m, i)
         ORDER BY u.i
        RETURNING {s}.events.global_position
    ) SELECT max(inserted.global_position) INTO v_global FROM inserted;
    v_pos := v_pos + v_count - 1;
    INSERT INTO {s}.streams AS s (stream, last_position, deleted) VALUES (p_stream, v_pos, false)
        ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position, deleted = false;
    IF v_max_count IS NOT NULL THEN
        DELETE FROM {s}.events e WHERE e.stream = p_stream AND e.stream_position <= v_pos - v_max_count;
    END IF;
    IF v_max_age IS NOT NULL THEN
        DELETE FROM {s}.events e
         WHERE e.stream = p_stream AND e.recorded_at < now() - v_max_age * INTERVAL '1 second';
    END IF;
    PERFORM pg_notify(p_channel, '');
    RETURN QUERY SELECT 'appended'::TEXT, v_pos, v_global;
END
$fn$;
"""
"""Created on first use; the function keeps an append to one round trip and one transaction."""

_COLUMNS = (
    "e.event_id, e.stream, e.stream_position, e.global_position, e.type, e.data, e.metadata, e.recorded_at"
)

_VISIBLE = """
    (s.max_count IS NULL OR e.stream_position > s.last_position - s.max_count)
    AND (s.max_age IS NULL OR e.recorded_at >= now() - s.max_age * INTERVAL '1 second')
"""
"""Retention hides events from readers even before the next append prunes them."""


_INSERT_MANY = """
INSERT INTO {s}.events (event_id, stream, category, stream_position, type, data, metadata)
SELECT u.id, u.stream, u.category, u.pos, u.t, u.d, u.m::JSON
  FROM unnest(%b::UUID[], %b::TEXT[], %b::TEXT[], %b::BIGINT[], %b::TEXT[], %b::BYTEA[], %b::TEXT[])
       WITH ORDINALITY AS u(id, stream, category, pos, t, d, m, i)
 ORDER BY u.i
RETURNING event_id, global_position
"""
"""One multi-row insert for a whole `append_many`; ORDER BY draws global positions in part order."""

_UPSERT_STREAMS = """
INSERT INTO {s}.streams (stream, last_position, deleted)
SELECT u.stream, u.pos, false FROM unnest(%b::TEXT[], %b::BIGINT[]) AS u(stream, pos)
    ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position, deleted = false
"""


_NAMING_PAGE = 20_000
"""Rows per page read by `events_naming` (~10 MB of bodies at 500 bytes each)."""


def _row_to_event(row: Sequence[Any]) -> RecordedEvent:
    """A selected `_COLUMNS` row as a RecordedEvent."""
    event_id, stream, stream_position, global_position, type_, data, metadata, recorded_at = row
    return RecordedEvent(
        id=event_id,
        stream=stream,
        stream_position=stream_position,
        global_position=global_position,
        type=type_,
        data=bytes(data),
        metadata=metadata,
        recorded_at=recorded_at,
    )


def _expected_args(expected: Expected) -> tuple[str, int | None]:
    """The expected version as the function's (kind, exact version) arguments."""
    if isinstance(expected, ExpectedVersion):
        return expected.value, None
    return "exact", expected


def _filter_sql(event_filter: EventFilter) -> tuple[str, dict[str, Any]]:
    """An `AND ...` clause and its parameters selecting the filter's categories and event types."""
    clause, params = "", {}
    if event_filter.categories:
        clause += " AND e.category = ANY(%(categories)s)"
        params["categories"] = list(event_filter.categories)
    if event_filter.event_types:
        clause += " AND e.type = ANY(%(types)s)"
        params["types"] = list(event_filter.event_types)
    return clause, params


def split_url(url: str) -> tuple[str, str]:
    """`postgresql://…?schema=x&…` → (a libpq URL without `schema`, the schema, default `eventlog`)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), "eventlog")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment)), schema


async def _check_if_closed(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool check: a round trip only if the idle connection's socket is readable (the server closed it).

    psycopg_pool's own check pays a round trip on every checkout (~0.5 ms, a third of a one-event append);
    an idle connection has nothing to read unless its server went away, which the round trip then confirms.
    """
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        await conn.execute("")


class PostgresEventStore(EventStore):
    """The event log in one PostgreSQL schema (tables `events` and `streams`)."""

    backstop: float = BACKSTOP_SECONDS
    """Seconds an idle subscription waits for a NOTIFY before it re-reads anyway."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "eventlog",
        max_connections: int = 8,
        timeout: float = DEPENDENCY_TIMEOUT,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
        self._conninfo = conninfo
        self._schema = schema
        self._timeout = timeout
        self._lock_key = zlib.crc32(f"cdp.eventlog:{schema}".encode())
        self._channel = f"cdp_eventlog_{schema}"
        # Bounded waits, so an outage answers UNAVAILABLE in seconds (`cdp.sqlengine` documents the values):
        # a short reconnect_timeout keeps psycopg_pool's backoff (1, 2, 4 … s) from outliving the outage, since
        # after giving up the pool reconnects on the next request; the check drops connections an outage broke.
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            open=False,
            kwargs={"autocommit": True, **postgres_timeouts(conninfo_to_dict(conninfo), timeout)},
            timeout=timeout,
            reconnect_timeout=timeout,
            check=_check_if_closed,
        )
        self._opened: asyncio.Task[None] | None = None
        self._signal = ChangeSignal()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float = DEPENDENCY_TIMEOUT) -> PostgresEventStore:
        """A store for `postgresql://user@host:port/db?schema=name` (schema defaults to `eventlog`); `timeout`
        bounds each wait for a server that does not answer."""
        conninfo, schema = split_url(url)
        return cls(conninfo, schema=schema, timeout=timeout)

    @property
    def schema(self) -> str:
        """The schema holding this log's tables."""
        return self._schema

    async def _ready(self) -> None:
        """Open the pool and create the schema once, on first use."""
        if self._closed:
            raise EventStoreError("the event store is closed")
        if self._opened is None:
            self._opened = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opened)

    async def _open(self) -> None:
        """Open the pool; create tables and function under the log's lock (DDL races otherwise)."""
        try:
            await self._pool.open(wait=True, timeout=self._timeout)
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                await conn.execute(SCHEMA_DDL.replace("{s}", self._schema).encode())
        except (psycopg.OperationalError, PoolTimeout) as error:
            self._opened = None
            raise EventStoreUnavailable(f"postgres event store: {error}") from error

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """A pooled connection; connection faults surface as EventStoreUnavailable."""
        await self._ready()
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise EventStoreUnavailable(f"postgres event store: {error}") from error

    def _sql(self, text: str) -> bytes:
        """A statement with `{s}` naming this store's schema."""
        return text.replace("{s}", self._schema).encode()

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected: Expected = ExpectedVersion.ANY
    ) -> AppendResult:
        """Append atomically in one round trip; a retry of stored event ids returns the original result."""
        check_batch(stream, events)
        kind, version = _expected_args(expected)
        args = (
            stream,
            stream_category(stream),
            kind,
            version,
            self._lock_key,
            self._channel,
            [e.id for e in events],
            [e.type for e in events],
            [e.data for e in events],
            [encode_metadata(e.metadata) for e in events],
        )
        async with self._connection() as conn:
            # %b: arrays in binary format cost a tenth of the text format to dump (25 ms → 3 ms for 2,500)
            cursor = await conn.execute(
                self._sql("SELECT * FROM {s}.append_events(%s, %s, %s, %s, %s, %s, %b, %b, %b, %b)"), args
            )
            outcome, stream_position, global_position = _one(await cursor.fetchone())
        return self._result(stream, expected, outcome, stream_position, global_position)

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult | EventStoreError]:
        """Every part in one transaction under the append lock, in two round trips (pipeline mode).

        The first reads the call's stored ids and streams after taking the lock; the parts are decided here
        (the same rules as every adapter); the second inserts every event in one statement and commits.
        """
        check_parts(appends)
        if not appends:
            return []
        async with self._connection() as conn, conn.pipeline():
            async with conn.transaction():
                # The lock is its own statement: the lookups' snapshot must be taken after it is granted.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                states, retention, stored = await self._lookup(conn, appends)
                plan = plan_append_many(appends, stored, states)
                inserted = await self._insert(conn, plan, retention) if plan.writes else None
            # Fetching after the block sends the insert and COMMIT together; an error surfaces here too.
            rows = await inserted.fetchall() if inserted is not None else []
        if not plan.writes:
            return plan.results([])
        self._signal.notify()
        by_id: dict[Any, int] = dict(rows)
        return plan.results([by_id[w.event.id] for w in plan.writes])

    async def _lookup(
        self, conn: psycopg.AsyncConnection[TupleRow], appends: Sequence[StreamAppend]
    ) -> tuple[dict[str, StreamState], set[str], list[tuple[Any, str, int, int]]]:
        """The call's existing streams, those with retention, and its ids already stored (one sync)."""
        names = list(dict.fromkeys(part.stream for part in appends))
        ids = [e.id for part in appends for e in part.events]
        streams = await conn.execute(
            self._sql(
                "SELECT stream, last_position, deleted, max_age IS NOT NULL OR max_count IS NOT NULL"
                " FROM {s}.streams WHERE stream = ANY(%b::TEXT[])"
            ),
            (names,),
        )
        found = await conn.execute(
            self._sql(
                "SELECT event_id, stream, stream_position, global_position FROM {s}.events"
                " WHERE event_id = ANY(%b::UUID[])"
            ),
            (ids,),
        )
        states: dict[str, StreamState] = {}
        retention: set[str] = set()
        for stream, last, deleted, retained in await streams.fetchall():
            states[stream] = StreamState(last, deleted)
            if retained:
                retention.add(stream)
        stored = [(r[0], r[1], r[2], r[3]) for r in await found.fetchall()]
        return states, retention, stored

    async def _insert(
        self, conn: psycopg.AsyncConnection[TupleRow], plan: AppendPlan, retention: set[str]
    ) -> psycopg.AsyncCursor[TupleRow]:
        """Queue the insert, the streams' new versions, retention pruning and the NOTIFY."""
        writes = plan.writes
        inserted = await conn.execute(
            self._sql(_INSERT_MANY),
            (
                [w.event.id for w in writes],
                [w.stream for w in writes],
                [stream_category(w.stream) for w in writes],
                [w.stream_position for w in writes],
                [w.event.type for w in writes],
                [w.event.data for w in writes],
                [encode_metadata(w.event.metadata) for w in writes],
            ),
        )
        await conn.execute(self._sql(_UPSERT_STREAMS), (list(plan.versions), list(plan.versions.values())))
        pruned = [stream for stream in plan.versions if stream in retention]
        if pruned:
            await conn.execute(
                self._sql(
                    "DELETE FROM {s}.events e USING {s}.streams s WHERE s.stream = ANY(%b::TEXT[])"
                    " AND e.stream = s.stream AND NOT (" + _VISIBLE + ")"
                ),
                (pruned,),
            )
        await conn.execute("SELECT pg_notify(%s, '')", (self._channel,))
        return inserted

    def _result(
        self,
        stream: str,
        expected: Expected,
        outcome: str,
        stream_position: int | None,
        global_position: int | None,
    ) -> AppendResult:
        """The function's outcome as a result or an error."""
        if outcome == "wrong_version":
            raise WrongExpectedVersion(stream, expected, stream_position)
        if outcome == "conflict":
            raise EventIdConflict(
                f"stream {stream!r}: some event ids of this append are already stored elsewhere"
            )
        if outcome == "appended":
            self._signal.notify()
        assert stream_position is not None and global_position is not None
        return AppendResult(stream_position, global_position, replayed=outcome != "appended")

    async def read_stream(
        self,
        stream: str,
        from_position: int | None = None,
        *,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream from a stream position (inclusive), forwards or backwards."""
        bound, order = ("<=", "DESC") if backwards else (">=", "ASC")
        if from_position is None:
            from_position = END if backwards else 0
        query = self._sql(
            f"SELECT {_COLUMNS} FROM {{s}}.events e LEFT JOIN {{s}}.streams s ON s.stream = e.stream"
            f" WHERE e.stream = %(stream)s AND e.stream_position {bound} %(from)s AND {_VISIBLE}"
            f" ORDER BY e.stream_position {order} LIMIT %(limit)s"
        )
        async with self._connection() as conn:
            cursor = await conn.execute(query, {"stream": stream, "from": from_position, "limit": limit})
            return [_row_to_event(r) for r in await cursor.fetchall()]

    async def read_all(
        self, after: int = START, *, limit: int | None = None, filter: EventFilter = ALL
    ) -> list[RecordedEvent]:
        """Events of the whole log after a global position, in global order."""
        events, _ = await self._page(after, limit, filter)
        return events

    async def _page(
        self, after: int, limit: int | None, event_filter: EventFilter
    ) -> tuple[list[RecordedEvent], int]:
        """Visible events after `after` and the head they were read under, in one statement (one snapshot)."""
        where, params = _filter_sql(event_filter)
        query = self._sql(
            "SELECT head.h, ev.* FROM (SELECT coalesce(max(global_position), -1) AS h FROM {s}.events) head"
            f" LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM {{s}}.events e"
            # Each event's stream is looked up by its key (OFFSET 0 keeps the planner from turning this into a
            # hash join over every event after `after`, sorted on disk before the LIMIT: 0.3 s a page at 200k
            # events, growing with the log, against a few ms this way, whatever its size).
            " LEFT JOIN LATERAL (SELECT s.max_count, s.last_position, s.max_age FROM {s}.streams s"
            " WHERE s.stream = e.stream OFFSET 0) s ON true"
            f" WHERE e.global_position > %(after)s AND e.global_position <= head.h{where} AND {_VISIBLE}"
            " ORDER BY e.global_position LIMIT %(limit)s) ev ON true ORDER BY ev.global_position"
        )
        async with self._connection() as conn:
            cursor = await conn.execute(query, {"after": after, "limit": limit, **params})
            rows = await cursor.fetchall()
        head = rows[0][0] if rows else START
        events = [_row_to_event(r[1:]) for r in rows if r[1] is not None]
        full = limit is not None and len(events) == limit
        return events, events[-1].global_position if full else max(after, head)

    def subscribe(self, after: int = START, *, filter: EventFilter = ALL) -> AsyncIterator[RecordedEvent]:
        """Catch up from a global position, then follow live appends (woken by NOTIFY)."""
        return self._follow(after, filter)

    async def _follow(self, after: int, event_filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        """The subscription generator; starts the shared listener on first use.

        No wake-up is lost: `follow` arms the signal before each read, NOTIFY is delivered only after the
        appending transaction committed, and the listener notifies once more whenever it (re)starts
        listening, for what was appended while it was not.
        """
        await self._ready()
        self._start_listener()
        async for event in follow(self._page, self._signal, after, event_filter, backstop=self.backstop):
            yield event

    def _start_listener(self) -> None:
        """One listener per store and event loop, shared by every subscription."""
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener.done() or self._listener.get_loop() is not loop:
            self._listener = loop.create_task(self._listen())

    async def _listen(self) -> None:
        """Relay NOTIFY from appenders of every process to subscribers; reconnect after faults, backing off."""
        failures = 0
        while not self._closed:
            try:
                conninfo = make_conninfo(self._conninfo, **_LISTENER_KEEPALIVES)
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f'LISTEN "{self._channel}"'.encode())
                    failures = 0
                    self._signal.notify()  # anything appended while not listening is read now
                    async for _ in conn.notifies():
                        self._signal.notify()
            except (psycopg.Error, OSError) as error:
                failures += 1
                delay = min(BACKSTOP_SECONDS, 0.1 * 2**failures)
                log.warning(
                    "eventlog_listener_lost", error=f"{type(error).__name__}: {error}", retry_in=delay
                )
                await asyncio.sleep(delay)

    async def delete_stream(self, stream: str) -> None:
        """Delete every event of the stream; a later append restarts it after its old last position."""
        await self._locked(
            ("DELETE FROM {s}.events WHERE stream = %s", (stream,)),
            ("UPDATE {s}.streams SET deleted = true WHERE stream = %s", (stream,)),
        )

    async def truncate_stream(self, stream: str, before: int) -> None:
        """Delete the events of the stream whose stream position is below `before`."""
        await self._locked(
            ("DELETE FROM {s}.events WHERE stream = %s AND stream_position < %s", (stream, before))
        )

    async def set_stream_metadata(self, stream: str, metadata: StreamMetadata) -> None:
        """Set the retention enforced on reads, and prune what it already hides."""
        age = metadata.max_age.total_seconds() if metadata.max_age is not None else None
        await self._locked(
            (
                "INSERT INTO {s}.streams (stream, max_age, max_count) VALUES (%s, %s, %s) ON CONFLICT (stream)"
                " DO UPDATE SET max_age = excluded.max_age, max_count = excluded.max_count",
                (stream, age, metadata.max_count),
            ),
            (
                "DELETE FROM {s}.events e USING {s}.streams s WHERE s.stream = %s AND e.stream = s.stream"
                " AND NOT (" + _VISIBLE + ")",
                (stream,),
            ),
        )

    async def events_naming(
        self, terms: Sequence[str], *, skip_categories: Sequence[str] = ()
    ) -> list[RecordedEvent]:
        """Every stored event (hidden by retention or not) whose stream name or body contains a term.

        Pages of raw rows (position, stream, body) are read in position order through the primary key and
        searched here with `matching_rows` (one C `find` per term over a whole page), then only the hits are
        read as events. In the server, `position` on a bytea compares byte by byte: ~0.7 s per term per 1M
        rows of 500 bytes, against ~2 s to read 1M such rows and ~0.15 s per term to search them here.
        """
        needles = naming_terms(terms)
        if not needles:
            return []
        hits: list[int] = []
        after = START
        page = self._sql(
            "SELECT e.global_position, e.stream, e.data FROM {s}.events e"
            " WHERE e.global_position > %(after)s AND NOT (e.category = ANY(%(skip)s::TEXT[]))"
            " ORDER BY e.global_position LIMIT %(limit)s"
        )
        while True:
            async with self._connection() as conn:
                cursor = conn.cursor(binary=True)
                await cursor.execute(
                    page, {"after": after, "skip": list(skip_categories), "limit": _NAMING_PAGE}
                )
                rows = [(int(r[0]), str(r[1]), bytes(r[2])) for r in await cursor.fetchall()]
            hits.extend(matching_rows(rows, needles))
            if len(rows) < _NAMING_PAGE:
                break
            after = rows[-1][0]
        found: list[RecordedEvent] = []
        for i in range(0, len(hits), _NAMING_PAGE):
            async with self._connection() as conn:
                cursor = await conn.execute(
                    self._sql(
                        f"SELECT {_COLUMNS} FROM {{s}}.events e WHERE e.global_position = ANY(%b::BIGINT[])"
                        " ORDER BY e.global_position"
                    ),
                    (hits[i : i + _NAMING_PAGE],),
                )
                found.extend(_row_to_event(r) for r in await cursor.fetchall())
        return found

    async def erase_events(self, changes: Mapping[uuid.UUID, bytes | None]) -> int:
        """Delete or rewrite the body of stored events in one transaction under the append lock."""
        deleted = [i for i, body in changes.items() if body is None]
        rewritten = [(i, body) for i, body in changes.items() if body is not None]
        if not changes:
            return 0
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            gone = await conn.execute(
                self._sql("DELETE FROM {s}.events WHERE event_id = ANY(%b::UUID[])"), (deleted,)
            )
            changed = await conn.execute(
                self._sql(
                    "UPDATE {s}.events e SET data = u.d FROM unnest(%b::UUID[], %b::BYTEA[]) AS u(id, d)"
                    " WHERE e.event_id = u.id"
                ),
                ([i for i, _ in rewritten], [body for _, body in rewritten]),
            )
            count = max(gone.rowcount, 0) + max(changed.rowcount, 0)
        self._signal.edited()
        return count

    async def reclaim(self) -> bool:
        """VACUUM the log's tables, so removed rows are no longer kept as dead tuples for old snapshots.

        VACUUM cannot remove a row an open transaction (of any session) may still see; it then leaves it,
        and a later reclaim removes it. It frees the space without zeroing it: the old bytes stay in the
        page until it is reused (seen with pageinspect; docs/eventlog.md). Not `VACUUM FULL` (it locks the log against appends while rewriting
        it). PostgreSQL's WAL (pg_wal) keeps the removed bodies until its segments are recycled, and
        backups keep them for good: crypto-shredding (destroying the subject's keys) covers those.
        """
        async with self._connection() as conn:
            await conn.execute(self._sql("VACUUM {s}.events, {s}.streams"))
        return True

    async def _locked(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run statements in one transaction holding the append lock, so no append interleaves."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            for text, params in statements:
                await conn.execute(self._sql(text), params)

    async def get_stream_metadata(self, stream: str) -> StreamMetadata:
        """The retention set on the stream (unlimited when none)."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                self._sql("SELECT max_age, max_count FROM {s}.streams WHERE stream = %s"), (stream,)
            )
            row = await cursor.fetchone()
        return metadata_from_columns(*row) if row is not None else StreamMetadata()

    async def head_position(self) -> int:
        """The global position of the newest stored event, or START when the log is empty."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                self._sql("SELECT coalesce(max(global_position), -1) FROM {s}.events")
            )
            return int(_one(await cursor.fetchone())[0])

    async def drop_schema(self) -> None:
        """Drop this log's schema and everything in it (for throwaway test and bench logs)."""
        async with self._connection() as conn:
            await conn.execute(self._sql("DROP SCHEMA IF EXISTS {s} CASCADE"))

    async def close(self) -> None:
        """Stop the listener and close the pool."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        self._signal.notify()
        await self._pool.close()


def _one(row: Sequence[Any] | None) -> Sequence[Any]:
    """A row a statement always returns."""
    if row is None:
        raise EventStoreError("the database returned no row")
    return row
