"""The SQL key store (SQLAlchemy 2, sync): SQLite for one machine, PostgreSQL for a cluster.

Sync SQLAlchemy because key look-ups are rare (a cache sits in front) and batched; async callers hop to a
worker thread (`Keyring.prefetch`). No extra driver is needed: pysqlite and psycopg 3 are already there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    exc,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from cdp.keyring.store import ERASED, KeyStore, StoredSubject, WrappedKey
from cdp.sqlengine import DEPENDENCY_TIMEOUT, chunks, create_sql_engine, scrub


class SqlKeyStore(KeyStore):
    """Wrapped keys in `<prefix>data_keys`, tombstones in `<prefix>erasures`."""

    def __init__(
        self, url: str, *, table_prefix: str = "keyring_", timeout: float = DEPENDENCY_TIMEOUT
    ) -> None:
        self.engine = create_keyring_engine(url, timeout=timeout)
        self.metadata = MetaData()
        self._keys = Table(
            f"{table_prefix}data_keys",
            self.metadata,
            Column("subject_id", String(64), primary_key=True),
            Column("version", Integer, primary_key=True),
            Column("master_key_id", String(32), nullable=False),
            Column("wrapped_key", LargeBinary, nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
        )
        self._erasures = Table(
            f"{table_prefix}erasures",
            self.metadata,
            Column("subject_id", String(64), primary_key=True),
            Column("erased_at", DateTime(timezone=True), nullable=False),
        )
        self._create_tables()

    def fetch(self, subjects: Sequence[str]) -> dict[str, StoredSubject]:
        """Keys first, tombstones second: if a shred lands in between, the tombstone still wins."""
        with self.engine.connect() as conn, conn.begin():
            return self._read(conn, list(dict.fromkeys(subjects)))

    def create(self, keys: Mapping[str, WrappedKey]) -> dict[str, StoredSubject]:
        """Insert-or-ignore, drop what a tombstone forbids, re-read: every process converges on one key."""
        subjects = list(keys)
        with self._write() as conn:
            now = datetime.now(UTC)
            for chunk in chunks(subjects):
                conn.execute(self._insert_ignore(), [_key_row(s, keys[s], now) for s in chunk])
            erased = self._erased(conn, subjects)
            for chunk in chunks(sorted(erased)):
                conn.execute(delete(self._keys).where(self._keys.c.subject_id.in_(chunk)))
            return self._read(conn, subjects)

    def shred(self, subject: str) -> None:
        """Delete key rows and write the tombstone in one transaction that excludes concurrent creators."""
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Waits for in-flight creators and blocks new ones, so no key can slip in beside the tombstone.
                conn.exec_driver_sql(f"LOCK TABLE {self._keys.name} IN SHARE ROW EXCLUSIVE MODE")
            conn.execute(delete(self._keys).where(self._keys.c.subject_id == subject))
            tombstone = {"subject_id": subject, "erased_at": datetime.now(UTC)}
            conn.execute(self._dialect_insert(self._erasures).values(tombstone).on_conflict_do_nothing())
        # Best effort, as every read model after a purge: SQLite's WAL folded in and emptied (secure_delete
        # zeroed the freed space), PostgreSQL's dead key rows vacuumed away.
        scrub(self.engine, [self._keys, self._erasures])

    def wrapped_by_other(self, master_key_id: str, limit: int) -> list[tuple[str, WrappedKey]]:
        """Keys still wrapped by a retired master key."""
        query = select(self._keys).where(self._keys.c.master_key_id != master_key_id).limit(limit)
        with self.engine.connect() as conn:
            return [(row.subject_id, _wrapped(row)) for row in conn.execute(query)]

    def replace_wrapping(self, subject: str, old: WrappedKey, new: WrappedKey) -> None:
        """Compare-and-swap on the wrapped bytes, so a shred that happened meanwhile is not undone."""
        c = self._keys.c
        change = (
            update(self._keys)
            .where(c.subject_id == subject, c.version == old.version, c.wrapped_key == old.wrapped)
            .values(master_key_id=new.master_key_id, wrapped_key=new.wrapped)
        )
        with self._write() as conn:
            conn.execute(change)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    def _read(self, conn: Connection, subjects: list[str]) -> dict[str, StoredSubject]:
        """Stored state of each known subject; tombstones override any key rows."""
        found: dict[str, list[WrappedKey]] = {}
        for chunk in chunks(subjects):
            query = select(self._keys).where(self._keys.c.subject_id.in_(chunk)).order_by("version")
            for row in conn.execute(query):
                found.setdefault(row.subject_id, []).append(_wrapped(row))
        result = {s: StoredSubject(False, tuple(ks)) for s, ks in found.items()}
        result.update(dict.fromkeys(self._erased(conn, subjects), ERASED))
        return result

    def _erased(self, conn: Connection, subjects: list[str]) -> set[str]:
        """Which of `subjects` have a tombstone."""
        erased: set[str] = set()
        for chunk in chunks(subjects):
            query = select(self._erasures.c.subject_id).where(self._erasures.c.subject_id.in_(chunk))
            erased.update(conn.scalars(query))
        return erased

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    def _insert_ignore(self) -> Any:
        """INSERT … ON CONFLICT DO NOTHING for the engine's dialect."""
        return self._dialect_insert(self._keys).on_conflict_do_nothing()

    def _dialect_insert(self, table: Table) -> Any:
        """The dialect's insert construct (both SQLite and PostgreSQL have ON CONFLICT)."""
        return (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert(table)

    def _create_tables(self) -> None:
        """Create missing tables under the write lock; on PostgreSQL a racing creator may still win, so re-check."""
        try:
            with self._write() as conn:
                self.metadata.create_all(conn)
        except (exc.ProgrammingError, exc.IntegrityError):
            self.metadata.create_all(self.engine)


def create_keyring_engine(url: str, *, timeout: float = DEPENDENCY_TIMEOUT) -> Engine:
    """An engine for the keyring database; `postgresql://` means psycopg 3."""
    # busy_timeout first, so switching a new file to WAL waits for other processes instead of failing.
    # FULL sync because ciphertext in the log is useless if its key is lost.
    return create_sql_engine(
        url,
        sqlite_pragmas=("busy_timeout=10000", "journal_mode=WAL", "synchronous=FULL", "secure_delete=ON"),
        timeout=timeout,
    )


def _key_row(subject: str, key: WrappedKey, now: datetime) -> dict[str, object]:
    """A data_keys row."""
    return {
        "subject_id": subject,
        "version": key.version,
        "master_key_id": key.master_key_id,
        "wrapped_key": key.wrapped,
        "created_at": now,
    }


def _wrapped(row: Any) -> WrappedKey:
    """A data_keys row as a WrappedKey."""
    return WrappedKey(row.version, row.master_key_id, bytes(row.wrapped_key))
