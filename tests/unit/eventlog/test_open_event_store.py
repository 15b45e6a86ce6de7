"""Choosing an adapter by URL, without touching any database."""

from __future__ import annotations

import pytest

from cdp.eventlog import open_event_store, sqlite_path
from cdp.eventlog.memory import InMemoryEventStore
from cdp.eventlog.postgres import PostgresEventStore
from cdp.eventlog.sqlite import SQLiteEventStore


def test_sqlite_urls_name_relative_and_absolute_files() -> None:
    assert sqlite_path("sqlite:///data/events.db") == "data/events.db"
    assert sqlite_path("sqlite:////var/lib/cdp/events.db") == "/var/lib/cdp/events.db"
    with pytest.raises(ValueError, match="sqlite:///"):
        sqlite_path("sqlite:///")


async def test_each_scheme_picks_its_adapter_lazily() -> None:
    sqlite_store = open_event_store("sqlite:///does/not/exist/yet.db")
    assert isinstance(sqlite_store, SQLiteEventStore)
    await sqlite_store.close()
    assert isinstance(open_event_store("memory://"), InMemoryEventStore)
    assert isinstance(open_event_store("sqlite://:memory:"), InMemoryEventStore)
    postgres = open_event_store("postgresql://nobody@127.0.0.1:1/none?schema=x")
    assert isinstance(postgres, PostgresEventStore) and postgres.schema == "x"


def test_an_unknown_scheme_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown event store URL scheme 'mysql'"):
        open_event_store("mysql://localhost/db")
