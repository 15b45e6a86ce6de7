"""Fixtures for event store integration tests: the PostgreSQL server and throwaway schemas."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server named by CDP_TEST_POSTGRES; unreachable fails the tests unless it is set to `skip`."""
    url = os.environ.get("CDP_TEST_POSTGRES", DEFAULT_POSTGRES)
    if url == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {url} is unreachable ({error}); set CDP_TEST_POSTGRES=skip to skip")
    return url


@pytest.fixture(scope="class")
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema unique to one test class, dropped afterwards."""
    schema = f"test_eventlog_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


@pytest.fixture(scope="session")
def kurrentdb_url() -> str:
    """The KurrentDB server named by CDP_TEST_KURRENTDB; there is none unless it is set."""
    url = os.environ.get("CDP_TEST_KURRENTDB", "")
    if not url:
        pytest.skip("no KurrentDB server: set CDP_TEST_KURRENTDB=kurrentdb://localhost:2113?tls=false to run")
    return url
