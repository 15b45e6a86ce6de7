"""SQLAlchemy engines for the platform's own databases (read models, keyring): one recipe, two tunings."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, exc, make_url, text

log = structlog.get_logger(__name__)

READ_MODEL_BUSY_MS = 30_000
"""How long a read-model writer waits for another (a reactor's batch holds the lock while it appends)."""
SCRUB_ATTEMPTS = 5
"""Times `scrub` tries to fold and empty a SQLite WAL."""
SCRUB_BUSY_MS = 2_000
"""How long each try waits for readers on older snapshots (not the connection's 30 s: a reactor waits on it)."""
SCRUB_PAUSE = 0.2
"""Seconds between those tries."""
WAL_SWITCH_TIMEOUT = 10.0
"""Seconds a new connection waits for others to finish switching the same file to WAL."""

DEPENDENCY_TIMEOUT = 2.0
"""Seconds a call waits for a PostgreSQL server that does not answer, by default (`CDP_DEPENDENCY_TIMEOUT_SECONDS`):
a pooled connection (the default 30 s made an outage look like a hang), a new connection, an unacknowledged
send. The event log's pool uses the same bound; then the call fails as UNAVAILABLE."""

LIBPQ_MIN_CONNECT_TIMEOUT = 2
"""libpq treats a connect_timeout of 1 as 2 seconds, and takes whole seconds."""

POSTGRES_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,  # probe idle connections, so a dead peer is noticed before a query is sent to it
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


IN_LIST_CHUNK = 500
"""Items per `IN (…)` list or multi-row insert: within every backend's limit on a statement's parameters."""


def chunks(items: Sequence[Any], size: int = IN_LIST_CHUNK) -> Iterator[Sequence[Any]]:
    """`items` in runs of at most `size`, for `IN (…)` lists and multi-row inserts."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def postgres_timeouts(named: Iterable[str], timeout: float = DEPENDENCY_TIMEOUT) -> dict[str, int]:
    """The libpq options that bound how long a lost or silent PostgreSQL server can hold a call, for a bound of
    `timeout` seconds, leaving out those a connection string sets itself (`named`: the options it sets).

    `connect_timeout` bounds reaching a server that does not answer (libpq: no limit); `tcp_user_timeout` how
    long a sent query may stay unacknowledged (a vanished host) before the socket fails. A statement timeout is
    left unset on purpose: replays and rebuilds legitimately run long.
    """
    options = {
        "connect_timeout": max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(timeout)),
        "tcp_user_timeout": max(1000, math.ceil(timeout * 1000)),
        **POSTGRES_KEEPALIVES,
    }
    present = set(named)
    return {key: value for key, value in options.items() if key not in present}


def create_sql_engine(
    url: str, *, sqlite_pragmas: Sequence[str], immediate: bool = False, timeout: float = DEPENDENCY_TIMEOUT
) -> Engine:
    """An engine for `url`; `postgresql://` means psycopg 3; SQLite files get their folder and `sqlite_pragmas`.

    SQLite connections run in autocommit mode and begin their own transactions: BEGIN IMMEDIATE when a
    connection carries the `sqlite_immediate` execution option (writers take the lock up front, so a
    read-then-write transaction cannot fail to upgrade: it waits for the busy timeout instead of failing with
    "database is locked"), BEGIN otherwise. `immediate` makes that option the engine's default.
    """
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        # Pre-ping drops connections a restart or an outage broke, so the first call after it succeeds.
        connect_args = postgres_timeouts(make_url(url).query, timeout)
        return create_engine(url, pool_pre_ping=True, pool_timeout=timeout, connect_args=connect_args)
    path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, execution_options={"sqlite_immediate": immediate})

    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, see `begin`
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas:
            if pragma.replace(" ", "").lower() == "journal_mode=wal":
                enable_wal(cursor, WAL_SWITCH_TIMEOUT)
            else:
                cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", _begin)
    return engine


def create_tables(metadata: MetaData, engine: Engine) -> None:
    """`metadata.create_all`, tolerating another process or runner creating the same tables at the same moment
    (PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin: it fails on its catalog)."""
    try:
        metadata.create_all(engine)
    except (exc.IntegrityError, exc.ProgrammingError):
        metadata.create_all(engine)  # the twin committed: every table exists now, nothing is created


def create_read_model_engine(url: str, *, timeout: float = DEPENDENCY_TIMEOUT) -> Engine:
    """An engine for a service's read-model database. On SQLite (WAL) every transaction takes the write lock up
    front unless it comes from `read_only(engine)`: a writer never has to upgrade a read lock, which is what
    fails with "database is locked" without waiting; writers queue on the busy timeout instead."""
    # NORMAL sync is enough for read models: the log can always replay them. secure_delete zeroes the pages
    # and cells a DELETE frees, so an erased person's rows do not linger in free space (see `scrub`).
    return create_sql_engine(
        url,
        sqlite_pragmas=(
            f"busy_timeout={READ_MODEL_BUSY_MS}",
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "secure_delete=ON",
        ),
        immediate=True,
        timeout=timeout,
    )


def read_only(engine: Engine) -> Engine:
    """The same database for queries: on SQLite their transactions begin DEFERRED, so in WAL mode readers never
    wait for the writer (nor it for them). Nothing written through it is safe from "database is locked"."""
    return engine.execution_options(sqlite_immediate=False)


def ping(engine: Engine) -> None:
    """One round trip to the database (`SELECT 1`, never taking SQLite's write lock): a health probe."""
    with read_only(engine).connect() as connection:
        connection.execute(text("SELECT 1"))


def rows_deleted(result: Any) -> int:
    """How many rows a DELETE's result says went (0 where the driver cannot tell, which reports -1 or None)."""
    return max(0, getattr(result, "rowcount", 0) or 0)


def scrub(engine: Engine, tables: Iterable[Table | str] = ()) -> bool:
    """After a purge committed, make the deleted rows physically go; False if SQLite's WAL could not be emptied.

    SQLite (with `secure_delete`, which zeroed the freed space in the pages the delete wrote): the WAL still
    holds the pages as they were before, so it is checkpointed into the database and truncated to nothing,
    retried while readers hold older snapshots (a bounded number of times, then logged). PostgreSQL: `VACUUM`
    of `tables`, which prunes the deleted row versions and their index entries (outside a transaction).
    """
    if engine.dialect.name == "sqlite":
        return checkpoint_wal(engine)
    names = sorted({table if isinstance(table, str) else table.name for table in tables})
    if names:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            quote = connection.dialect.identifier_preparer.quote
            for name in names:
                connection.exec_driver_sql(f"VACUUM {quote(name)}")
    return True


def checkpoint_wal(
    engine: Engine, attempts: int | None = None, pause: float | None = None, busy_ms: int | None = None
) -> bool:
    """`PRAGMA wal_checkpoint(TRUNCATE)` until it completes (every frame folded into the database, the WAL
    emptied), at most `attempts` times (`SCRUB_ATTEMPTS`), each waiting up to `busy_ms` (`SCRUB_BUSY_MS`) for
    readers of older snapshots to finish; False, with a `sqlite_wal_checkpoint_incomplete` log line, if it
    never completed."""
    attempts = SCRUB_ATTEMPTS if attempts is None else attempts
    pause = SCRUB_PAUSE if pause is None else pause
    busy_ms = SCRUB_BUSY_MS if busy_ms is None else busy_ms
    busy = frames = done = -1
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause)
        raw = engine.raw_connection()  # the pool's connections run in autocommit: no transaction is open
        try:
            cursor = raw.cursor()
            try:
                busy, frames, done = truncate_wal(cursor, busy_ms)
            finally:
                cursor.close()
        finally:
            raw.close()
        if busy == 0:
            return True
    log.warning(
        "sqlite_wal_checkpoint_incomplete",
        database=engine.url.database,
        attempts=attempts,
        busy=busy,
        wal_frames=frames,
        checkpointed=done,
    )
    return False


def truncate_wal(connection: Any, wait_ms: int) -> tuple[int, int, int]:
    """One `PRAGMA wal_checkpoint(TRUNCATE)` on a DB-API SQLite connection or cursor, waiting up to `wait_ms` for
    readers of older snapshots (its own busy timeout is put back afterwards): SQLite's (busy, WAL frames,
    frames checkpointed). `busy` is 0 once every frame is folded in and the WAL emptied ((0, 0, 0); (0, -1, -1)
    for a file not in WAL mode); a checkpoint refused as locked or busy answers (1, -1, -1)."""
    (usual,) = connection.execute("PRAGMA busy_timeout").fetchone()
    connection.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        busy, frames, done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        return 1, -1, -1
    finally:
        connection.execute(f"PRAGMA busy_timeout = {int(usual)}")
    return int(busy), int(frames), int(done)


def enable_wal(connection: Any, timeout: float) -> None:
    """Switch a SQLite connection's database to WAL, waiting out other connections doing the same.

    Switching needs an exclusive lock and SQLite does not run the busy handler for it: two processes (or two
    pooled connections) opening a new file at once would otherwise fail with "database is locked".
    """
    deadline = time.monotonic() + timeout
    while connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
