"""The agreement property, shared by the SQLite (unit) and PostgreSQL (integration) runs: on a population,
every node of a tree (and each extra leaf condition) selects in SQL exactly the profiles the Python evaluator
accepts at the same instant."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.segments import loading, sqlcompile
from services.segments.domain.conditions import EventNeeds, event_needs, walk
from services.segments.domain.evaluate import evaluate
from services.segments.facts import load_facts
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
        # The evaluator's own read path: the facts read back from the read model, only the messages the
        # definitions can look at (`EventNeeds`), decide the same as the whole records.
        needs = EventNeeds()
        for condition in (case.tree, *case.extra, *case.definitions.values()):
            if condition is not None:
                needs = needs | event_needs(condition)
        with Session(bind=connection) as session:
            read = load_facts(session, [f.profile_id for f in facts], needs)
        for node in [case.tree, *case.extra]:
            expected = {f.profile_id for f in facts if evaluate(node, f, NOW, audiences)}
            again = {p for p, f in read.items() if evaluate(node, f, NOW, audiences)}
            assert again == expected, f"{node!r}\nread back: {sorted(again)}\nrecords: {sorted(expected)}"
        counted = connection.execute(sqlcompile.count_members(case.tree, NOW, audiences)).scalar_one()
        assert counted == len(whole)
