"""The bare-driver baselines: the same rows into identical tables, without the port's checks."""

from __future__ import annotations

import sqlite3
import uuid

import psycopg

from cdp.eventlog.postgres import SCHEMA_DDL
from cdp.eventlog.sqlite import connect

Rows = list[tuple[uuid.UUID, str, str, int, str, bytes, str]]
"""(event id, stream, category, stream position, type, data, metadata JSON) per event."""


class RawSQLite:
    """sqlite3 executemany in one BEGIN IMMEDIATE transaction per batch."""

    def __init__(self, path: str) -> None:
        self._conn: sqlite3.Connection = connect(path, 30.0)

    def insert(self, stream: str, start: int, rows: Rows) -> None:
        """Insert one batch and move the stream's version."""
        now = int(1e6)
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT INTO events (event_id, stream, category, stream_position, type, data, metadata, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r[0].bytes, *r[1:], now) for r in rows],
        )
        self._conn.execute(
            "INSERT INTO streams (stream, last_position) VALUES (?, ?)"
            " ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position",
            (stream, start + len(rows) - 1),
        )
        self._conn.execute("COMMIT")

    def insert_many(self, rows: Rows, versions: dict[str, int]) -> None:
        """Insert rows of many streams and move their versions, in one transaction."""
        now = int(1e6)
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT INTO events (event_id, stream, category, stream_position, type, data, metadata, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r[0].bytes, *r[1:], now) for r in rows],
        )
        self._conn.executemany(
            "INSERT INTO streams (stream, last_position) VALUES (?, ?)"
            " ON CONFLICT (stream) DO UPDATE SET last_position = excluded.last_position",
            list(versions.items()),
        )
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


class RawPostgres:
    """psycopg binary COPY (the fastest bulk path) in one transaction per batch, in a throwaway schema."""

    def __init__(self, url: str, schema: str) -> None:
        self._schema = schema
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.execute(SCHEMA_DDL.replace("{s}", schema).encode())

    def insert(self, stream: str, start: int, rows: Rows) -> None:
        """Insert one batch and move the stream's version."""
        s = self._schema
        columns = "event_id, stream, category, stream_position, type, data, metadata"
        with self._conn.transaction(), self._conn.cursor() as cursor:
            with cursor.copy(f"COPY {s}.events ({columns}) FROM STDIN (FORMAT BINARY)".encode()) as copy:
                copy.set_types(["uuid", "text", "text", "int8", "text", "bytea", "json"])
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {s}.streams (stream, last_position) VALUES (%s, %s) ON CONFLICT (stream)"
                " DO UPDATE SET last_position = excluded.last_position".encode(),
                (stream, start + len(rows) - 1),
            )

    def insert_many(self, rows: Rows, versions: dict[str, int]) -> None:
        """Insert rows of many streams (COPY) and move their versions (one multi-row upsert), in one transaction."""
        s = self._schema
        columns = "event_id, stream, category, stream_position, type, data, metadata"
        with self._conn.transaction(), self._conn.cursor() as cursor:
            with cursor.copy(f"COPY {s}.events ({columns}) FROM STDIN (FORMAT BINARY)".encode()) as copy:
                copy.set_types(["uuid", "text", "text", "int8", "text", "bytea", "json"])
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {s}.streams (stream, last_position)"
                " SELECT * FROM unnest(%b::TEXT[], %b::BIGINT[]) ON CONFLICT (stream)"
                " DO UPDATE SET last_position = excluded.last_position".encode(),
                (list(versions), list(versions.values())),
            )

    def close(self) -> None:
        """Drop the schema and close the connection."""
        self._conn.execute(f"DROP SCHEMA IF EXISTS {self._schema} CASCADE".encode())
        self._conn.close()
