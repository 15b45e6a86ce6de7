"""The two evaluators agree: for random populations and random trees over every node kind, the SQL compiled by
`sqlcompile` (on SQLite) selects exactly the profiles `evaluate` accepts, at the same instant."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from services.segments import tables
from tests.fuzzing import examples
from tests.unit.segments.agreement import assert_agree
from tests.unit.segments.strategies import Case, cases

# One in-memory database for every example: each loads its population after clearing the fact tables.
ENGINE = create_engine("sqlite://", poolclass=StaticPool)
tables.metadata.create_all(ENGINE)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_sql_selects_what_python_accepts(case: Case) -> None:
    assert_agree(ENGINE, case)
