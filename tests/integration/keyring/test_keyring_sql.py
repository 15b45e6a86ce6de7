"""The keyring contract on SQLite (a file shared by several engines) and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from cdp.keyring import InMemoryKeyStore, Keyring, KeyStore, MasterKeys
from cdp.keyring.sql import SqlKeyStore
from tests.integration.keyring.keyring_contract import OLD_MASTER, KeyringContract, subject

POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class TestInMemoryKeyring(KeyringContract):
    """The fake passes the same contract, so unit tests built on it mean something."""

    @pytest.fixture(autouse=True)
    def _shared(self) -> None:
        self.shared = InMemoryKeyStore()

    def new_store(self) -> KeyStore:
        return self.shared

    def key_rows(self, subject: str) -> int:
        return len(self.shared._keys.get(subject, {}))


class TestSqliteKeyring(KeyringContract):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'keyring.db'}"
        self.path = tmp_path / "keyring.db"

    def new_store(self) -> KeyStore:
        return SqlKeyStore(self.url)

    def key_rows(self, subject: str) -> int:
        return _count_key_rows(self.new_store_tracked(), subject)

    def test_concurrent_processes_converge_on_one_key(self) -> None:
        context = multiprocessing.get_context("spawn")
        with context.Pool(3) as pool:
            results = pool.map(_create_keys, [self.url] * 3)
        assert results[0] == results[1] == results[2]
        assert len(results[0]) == 30

    def test_shredded_key_bytes_leave_the_database_file(self) -> None:
        store = SqlKeyStore(self.url)
        self.stores.append(store)
        Keyring(store, MasterKeys(OLD_MASTER)).data_keys([subject(n) for n in range(5)])
        wrapped = store.fetch([subject(1)])[subject(1)].keys[0].wrapped
        assert wrapped in _database_bytes(self.path)
        Keyring(store, MasterKeys(OLD_MASTER)).shred(subject(1))
        assert wrapped not in _database_bytes(self.path)


@pytest.mark.postgres
class TestPostgresKeyring(KeyringContract):
    @pytest.fixture(autouse=True)
    def _tables(self) -> Iterator[None]:
        self.prefix = f"t{uuid.uuid4().hex[:10]}_"
        try:
            probe = SqlKeyStore(POSTGRES, table_prefix=self.prefix)
        except Exception as error:
            pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {error}")
        yield
        probe.metadata.drop_all(probe.engine)
        probe.close()

    def new_store(self) -> KeyStore:
        return SqlKeyStore(POSTGRES, table_prefix=self.prefix)

    def key_rows(self, subject: str) -> int:
        return _count_key_rows(self.new_store_tracked(), subject)


def _create_keys(url: str) -> dict[str, bytes]:
    """Run in a separate OS process: create keys for the same subjects as the other processes."""
    store = SqlKeyStore(url)
    try:
        keys = Keyring(store, MasterKeys(OLD_MASTER)).data_keys([subject(n) for n in range(30)])
        return {s: k.keys[1] for s, k in keys.items()}
    finally:
        store.close()


def _count_key_rows(store: KeyStore, subject: str) -> int:
    """Key rows physically present for a subject, bypassing the tombstone logic of `fetch`."""
    assert isinstance(store, SqlKeyStore)
    table = store.metadata.sorted_tables[0]
    with store.engine.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.subject_id == subject)
        return int(conn.execute(query).scalar_one())


def _database_bytes(path: Path) -> bytes:
    """The database file and its WAL, as an attacker with a disk image would see them."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_postgres_url_is_reachable_or_skipped() -> None:
    """Keeps the PostgreSQL probe honest: it reports which server it would use."""
    try:
        with create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://")).connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
    except Exception as error:
        pytest.skip(f"PostgreSQL not reachable: {error}")
