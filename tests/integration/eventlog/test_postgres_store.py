"""The PostgreSQL adapter against the event store contract, on a throwaway schema."""

from __future__ import annotations

import pytest

from cdp.eventlog import EventStore, open_event_store
from cdp.eventlog.postgres import PostgresEventStore, split_url

from .contract import EventStoreContract, new_events

pytestmark = pytest.mark.postgres


class TestPostgresEventStore(EventStoreContract):
    """Every contract test on one schema shared by the class (tests isolate by stream category)."""

    log_is_fresh_per_test = False

    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str, postgres_schema: str) -> None:
        """This class's server and schema."""
        separator = "&" if "?" in postgres_url else "?"
        self.url = f"{postgres_url}{separator}schema={postgres_schema}"

    async def open_store(self) -> EventStore:
        """A new store instance (its own pool) on the class's schema."""
        return open_event_store(self.url)

    async def writer_stores(self, store: EventStore, count: int) -> list[EventStore]:
        """Separate instances, hence separate pools and connections."""
        return [store, *[await self.open_store() for _ in range(count - 1)]]

    async def test_an_empty_schema_has_no_head(self, postgres_url: str) -> None:
        store = PostgresEventStore.from_url(f"{postgres_url}?schema=test_eventlog_empty_{id(self)}")
        try:
            assert await store.head_position() == -1
            assert await store.read_all() == []
            await store.append("x-1", new_events(1))
            assert await store.head_position() >= 1
        finally:
            await store.drop_schema()
            await store.close()

    def test_the_url_names_the_schema(self) -> None:
        assert split_url("postgresql://u@h:5/db?schema=abc&sslmode=disable") == (
            "postgresql://u@h:5/db?sslmode=disable",
            "abc",
        )
        assert split_url("postgres://u@h/db")[1] == "eventlog"
        with pytest.raises(ValueError, match="schema"):
            PostgresEventStore("postgresql://u@h/db", schema="Robert'); DROP")
