"""What an infrastructure failure means, in one place: a dependency down or busy (`Unavailable`), slow
(`DeadlineExceeded`), a lost race (`Conflict`), or none of these (None: a bug). Transport-free: the gRPC and HTTP
edges map the answer to their statuses, and the reactor waits out outages instead of parking the event.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sql_exc

from cdp import errors
from cdp.eventlog.port import EventStoreUnavailable

_DATABASE_DOWN = "a database this service depends on is unavailable or busy; retry with backoff"
_LOG_DOWN = "the event log is unavailable; retry with backoff"
TIMED_OUT = "the service timed out waiting on a dependency"

# SQLite result codes that mean "busy or unreachable for now", by prefix (SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_…).
# Everything else (no such table, a constraint, a corrupt file) is a bug or needs an operator: INTERNAL.
_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL")

# PostgreSQL SQLSTATE classes that mean the server is unreachable, shutting down or out of resources:
# 08 connection exception, 53 insufficient resources, 57 operator intervention, 58 system error (I/O).
# psycopg's OperationalError also covers bad passwords (28) and program limits (54): not outages, INTERNAL.
_POSTGRES_TRANSIENT = ("08", "53", "57", "58")
_POSTGRES_LOCK_NOT_AVAILABLE = "55P03"
_POSTGRES_QUERY_CANCELED = "57014"


def classify_fault(error: BaseException) -> errors.DomainError | None:
    """The domain error an exception stands for: itself, an outage or a timeout of a dependency; None for a bug."""
    if isinstance(error, errors.DomainError):
        return error
    if isinstance(error, EventStoreUnavailable):
        return errors.Unavailable(_LOG_DOWN)
    if isinstance(error, sql_exc.DBAPIError):
        if error.connection_invalidated:
            return errors.Unavailable(_DATABASE_DOWN)
        return classify_fault(error.orig) if error.orig is not None else None
    if isinstance(error, sql_exc.TimeoutError | sql_exc.DisconnectionError):  # pool checkout timed out
        return errors.Unavailable(_DATABASE_DOWN)
    if isinstance(error, psycopg.Error):
        return _classify_postgres(error)
    if isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", None) or ""
        return errors.Unavailable(_DATABASE_DOWN) if name.startswith(_SQLITE_TRANSIENT) else None
    if isinstance(error, TimeoutError):  # asyncio.timeout, wait_for, a socket timeout
        return errors.DeadlineExceeded(TIMED_OUT)
    if isinstance(error, ConnectionError):  # a socket refused or reset (a destination, a peer)
        return errors.Unavailable(f"a connection failed: {error}")
    return None


def _classify_postgres(error: psycopg.Error) -> errors.DomainError | None:
    """psycopg errors by SQLSTATE; no SQLSTATE means the client lost or never got a connection."""
    state = error.sqlstate
    if state == _POSTGRES_QUERY_CANCELED:  # statement_timeout
        return errors.DeadlineExceeded(TIMED_OUT)
    if state is not None and state.startswith("40"):  # serialization failure, deadlock
        return errors.Conflict("the request lost a race with a concurrent one; retry")
    if isinstance(error, psycopg.OperationalError) and (
        state is None or state[:2] in _POSTGRES_TRANSIENT or state == _POSTGRES_LOCK_NOT_AVAILABLE
    ):
        return errors.Unavailable(_DATABASE_DOWN)
    return None


def is_transient(error: BaseException) -> bool:
    """Whether retrying the same work later may succeed: a dependency down, busy or slow, or a lost race."""
    return isinstance(classify_fault(error), errors.Unavailable | errors.DeadlineExceeded | errors.Conflict)


def failure_fields(error: BaseException) -> dict[str, str]:
    """What a log line says about an infrastructure failure: its class and first line, never SQL parameters."""
    cause = error.orig if isinstance(error, sql_exc.DBAPIError) and error.orig is not None else error
    text = str(cause).strip().splitlines()
    return {"error_class": _qualified(type(cause)), "cause": text[0][:300] if text else ""}


def _qualified(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def describe(error: BaseException) -> str:
    """`Class: first line` of the failure's cause, for logs and records kept for good (`EventParked`): a
    SQLAlchemy error's SQL and parameters, which may hold personal values, are left out."""
    fields = failure_fields(error)
    return f"{fields['error_class']}: {fields['cause']}" if fields["cause"] else fields["error_class"]
