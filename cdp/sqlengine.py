"""SQLAlchemy engines for the platform's own databases (read models, keyring): one recipe, two tunings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event


def create_sql_engine(url: str, *, sqlite_pragmas: Sequence[str]) -> Engine:
    """An engine for `url`; `postgresql://` means psycopg 3; SQLite files get their folder and `sqlite_pragmas`.

    SQLite connections run in autocommit mode and begin their own transactions: BEGIN IMMEDIATE when a
    connection carries the `sqlite_immediate` execution option (writers take the lock up front, so a
    read-then-write transaction cannot fail to upgrade), BEGIN otherwise.
    """
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    def connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, see `begin`
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    event.listen(engine, "connect", connect)
    event.listen(engine, "begin", _begin)
    return engine


def _begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
