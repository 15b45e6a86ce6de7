"""The reactor contract on PostgreSQL: the log and the read model each in a throwaway schema of one database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from cdp.eventlog import EventStore, open_event_store
from tests.integration.eventlog.conftest import postgres_url  # noqa: F401 - the fixture, shared
from tests.integration.reactor.contract import ReactorContract

pytestmark = pytest.mark.postgres


class TestPostgresReactor(ReactorContract):
    @pytest.fixture(autouse=True)
    def _schemas(self, postgres_url: str) -> Iterator[None]:  # noqa: F811
        self.server = postgres_url
        self.log_schema = f"test_reactor_log_{uuid.uuid4().hex[:10]}"
        self.model_schema = f"test_reactor_model_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.model_schema}".encode())
        yield
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for schema in (self.log_schema, self.model_schema):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())

    async def open_store(self) -> EventStore:
        return open_event_store(self.store_url())

    def store_url(self) -> str:
        separator = "&" if "?" in self.server else "?"
        return f"{self.server}{separator}schema={self.log_schema}"

    def read_model_url(self) -> str:
        separator = "&" if "?" in self.server else "?"
        return f"{self.server}{separator}options=-csearch_path%3D{self.model_schema}"
