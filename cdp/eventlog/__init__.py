"""The event log: the port, and `open_event_store` choosing an adapter by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

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
    PhysicalEditUnsupported,
    RecordedEvent,
    StreamAppend,
    StreamDeleted,
    StreamMetadata,
    WrongExpectedVersion,
    stream_category,
)
from cdp.sqlengine import DEPENDENCY_TIMEOUT

__all__ = [
    "ALL",
    "END",
    "START",
    "AppendResult",
    "EventFilter",
    "EventIdConflict",
    "EventStore",
    "EventStoreError",
    "EventStoreUnavailable",
    "Expected",
    "ExpectedVersion",
    "NewEvent",
    "PhysicalEditUnsupported",
    "RecordedEvent",
    "StreamAppend",
    "StreamDeleted",
    "StreamMetadata",
    "WrongExpectedVersion",
    "open_event_store",
    "sqlite_path",
    "stream_category",
]


def open_event_store(url: str, *, timeout: float = DEPENDENCY_TIMEOUT) -> EventStore:
    """The adapter a URL names; connections are opened lazily, on first use. `timeout` bounds each wait for a
    PostgreSQL server that does not answer (SQLite waits on its busy timeout; KurrentDB on its client's own)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory" or url.startswith("sqlite://:memory:"):
        from cdp.eventlog.memory import InMemoryEventStore

        return InMemoryEventStore()
    if scheme == "sqlite":
        from cdp.eventlog.sqlite import SQLiteEventStore

        return SQLiteEventStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from cdp.eventlog.postgres import PostgresEventStore

        return PostgresEventStore.from_url(url, timeout=timeout)
    if scheme in ("kurrentdb", "esdb", "kdb", "kurrentdb+discover", "esdb+discover", "kdb+discover"):
        from cdp.eventlog.kurrentdb import KurrentDBEventStore

        return KurrentDBEventStore(url)
    raise ValueError(
        f"unknown event store URL scheme {scheme!r} in {url!r}: "
        "use sqlite:///path.db, memory://, postgresql://… or kurrentdb://host:2113?tls=false"
    )


def sqlite_path(url: str) -> str:
    """`sqlite:///rel/path.db` → `rel/path.db`; `sqlite:////abs/path.db` → `/abs/path.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"a SQLite event store URL looks like sqlite:///relative.db or sqlite:////abs.db: {url!r}"
        )
    path = url[len(prefix) :].split("?", 1)[0]
    return path
