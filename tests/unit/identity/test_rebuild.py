"""The rebuild after a split, on small explicit cases (the general property is in test_properties)."""

from __future__ import annotations

from services.identity.domain import decisions as d
from services.identity.domain.decider import decide
from services.identity.domain.graph import Graph
from services.identity.domain.rebuild import REBUILT, component, rebuild
from services.identity.domain.rules import default_rules
from services.identity.domain.splits import split_identifier
from tests.unit.identity.helpers import T0, observe, subject


def test_cutting_a_shared_device_separates_the_people_it_had_joined() -> None:
    rules = default_rules()
    messages = [
        observe(1, userId="u1", context={"device": {"id": "kiosk"}}),
        observe(2, traits={"email": "e2@x.io"}, context={"device": {"id": "kiosk"}}, message_type="identify"),
        observe(3, userId="u1", anonymousId="a1"),
    ]
    graph = Graph()
    for message in messages:
        decide(graph, rules, message)
    kiosk, u1, e2 = subject("device_id", "kiosk"), subject("user_id", "u1"), subject("email", "e2@x.io")
    profile = graph.profile_of(u1)
    assert profile is not None and graph.profile_of(e2) == profile  # the kiosk joined them

    split = split_identifier(
        graph, profile, kiosk, decision_id="s", new_profile="cut", reason="kiosk", prevent_relink=False, at=T0
    )
    part = component(graph, split, (), messages)
    graph.apply(split)
    made = rebuild(graph, rules, split, part)

    assert graph.partition() == {
        frozenset({u1, subject("anonymous_id", "a1")}),
        frozenset({e2}),
        frozenset({kiosk}),
    }
    assert graph.profile_of(u1) == profile  # the person with the highest-priority identifier keeps the id
    moves = [x for x in made if isinstance(x, d.Split)]
    assert [(m.subjects, m.automatic, m.reason) for m in moves] == [((e2,), True, REBUILT)]
    replayed = Graph()  # the decisions alone give the same graph
    for message in messages:
        decide(replayed, rules, message)
    replayed.apply_all([split, *made])
    assert replayed.partition() == graph.partition()
