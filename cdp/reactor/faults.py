"""Which failures are outages (retry them, the event is not at fault) and which are the event's own."""

from __future__ import annotations

import sqlite3

import psycopg
from psycopg_pool import PoolTimeout
from sqlalchemy import exc

from cdp.eventlog.port import EventStoreUnavailable

_SQLITE_OUTAGES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
"""SQLite result codes of a busy, full or unreachable file (not a bad statement: that is a bug)."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` means a dependency (the log, a database) is briefly away or busy."""
    if isinstance(error, EventStoreUnavailable | PoolTimeout | TimeoutError | ConnectionError):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return is_transient(error.orig) if error.orig is not None else False
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        return code is None or (code & 0xFF) in _SQLITE_OUTAGES
    return isinstance(error, psycopg.OperationalError)
