"""The agreement property on PostgreSQL: the compiled SQL (strpos, COLLATE "C" ordering, double precision
numbers) selects exactly what the Python evaluator accepts, in a throwaway schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from cdp.sqlengine import create_read_model_engine
from services.segments import tables
from tests.fuzzing import examples
from tests.unit.segments.agreement import assert_agree
from tests.unit.segments.strategies import Case, cases

pytestmark = pytest.mark.postgres

POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    schema = f"test_segments_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    engine = create_read_model_engine(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        tables.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
def test_sql_selects_what_python_accepts_on_postgres(engine: Engine, case: Case) -> None:
    assert_agree(engine, case)
