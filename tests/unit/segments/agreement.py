"""The agreement property, shared by the SQLite (unit) and PostgreSQL (integration) runs: on a population,
every node of a tree (and each extra leaf condition) selects in SQL exactly the profiles the Python evaluator
accepts at the same instant."""

from __future__ import annotations

from sqlalchemy import Engine

from services.segments import loading, sqlcompile
from services.segments.domain.conditions import walk
from services.segments.domain.evaluate import evaluate
from tests.unit.segments.strategies import NOW, Case, Population, lookup


def load(engine: Engine, population: Population) -> None:
    """Replace the fact tables' rows with the population's."""
    with engine.begin() as connection:
        loading.clear(connection)
        loading.insert_profiles(connection, population.profiles)
        loading.insert_events(connection, population.unattributed)


def assert_agree(engine: Engine, case: Case) -> None:
    """Load the case's population, then compare both evaluators on every condition of the case."""
    load(engine, case.population)
    audiences = lookup(case.definitions)
    facts = [loading.facts(record) for record in case.population.profiles]
    with engine.connect() as connection:
        for node in [*walk(case.tree), *case.extra]:
            expected = {f.profile_id for f in facts if evaluate(node, f, NOW, audiences)}
            found = set(connection.execute(sqlcompile.members(node, NOW, audiences)).scalars())
            assert found == expected, f"{node!r}\nSQL: {sorted(found)}\nPython: {sorted(expected)}"
        whole = {f.profile_id for f in facts if evaluate(case.tree, f, NOW, audiences)}
        counted = connection.execute(sqlcompile.count_members(case.tree, NOW, audiences)).scalar_one()
        assert counted == len(whole)
