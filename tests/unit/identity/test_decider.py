"""The decider on hand-written scenarios: creation, links, merges, refusals, aliases, splits, erasure."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cdp.errors import InvalidInput
from services.identity.domain import decisions as d
from services.identity.domain.decider import decide
from services.identity.domain.graph import Graph
from services.identity.domain.rules import Rules, TypeRule, default_rules
from services.identity.domain.splits import SplitRequest, plan_split, split_identifier, undo_merge
from tests.unit.identity.helpers import T0, observe, subject


def run(graph: Graph, *observations: object, rules: Rules | None = None) -> list[d.Decision]:
    out: list[d.Decision] = []
    for obs in observations:
        out += decide(graph, rules or default_rules(), obs)  # type: ignore[arg-type]
    return out


def test_an_unknown_identifier_creates_a_profile_and_a_known_one_decides_nothing() -> None:
    graph = Graph()
    first = run(graph, observe(1, anonymousId="a1"))
    assert [(type(x).__name__, x.rule) for x in first] == [("Linked", "new_identifier")]  # type: ignore[union-attr]
    assert isinstance(first[0], d.Linked) and first[0].creates
    assert run(graph, observe(2, anonymousId="a1")) == []


def test_decisions_are_deterministic() -> None:
    one, two = Graph(), Graph()
    messages = [observe(1, anonymousId="a1"), observe(2, anonymousId="a1", userId="u1")]
    assert run(one, *messages) == run(two, *messages)


def test_anonymous_on_two_devices_then_identify_then_alias_is_one_profile() -> None:
    graph = Graph()
    run(graph, observe(1, anonymousId="phone-anon"), observe(2, anonymousId="laptop-anon"))
    assert len(graph.nodes) == 2
    identify = observe(3, message_type="identify", anonymousId="phone-anon", userId="u1")
    linked = run(graph, identify)
    assert [type(x).__name__ for x in linked] == ["Linked"]
    alias = observe(4, message_type="alias", previousId="laptop-anon", userId="u1")
    merged = run(graph, alias)
    assert [(type(x).__name__, getattr(x, "rule", "")) for x in merged] == [("Merged", "alias")]
    assert len(graph.nodes) == 1
    (profile,) = graph.nodes
    assert graph.profile_of(subject("anonymous_id", "laptop-anon")) == profile


def test_two_user_ids_never_merge_and_the_refusal_names_the_rule() -> None:
    graph = Graph()
    run(graph, observe(1, userId="u1", traits={"email": "shared@x.io"}, message_type="identify"))
    run(graph, observe(2, userId="u2"))
    decided = run(graph, observe(3, userId="u2", message_type="identify", traits={"email": "shared@x.io"}))
    assert len(graph.nodes) == 2
    (refusal,) = decided
    assert isinstance(refusal, d.Rejected) and refusal.rule == "merge_protection"
    assert refusal.subject == subject("email", "shared@x.io")
    # The same message again does not repeat the refusal.
    assert run(graph, observe(4, userId="u2", message_type="identify", traits={"email": "shared@x.io"})) == []


def test_a_new_user_id_on_a_profile_that_has_one_is_a_value_limit() -> None:
    graph = Graph()
    run(graph, observe(1, userId="u1", anonymousId="a1"))
    decided = run(graph, observe(2, userId="u2", anonymousId="a1"))
    kinds = [(type(x).__name__, getattr(x, "rule", "")) for x in decided]
    assert kinds == [("Linked", "new_identifier"), ("Rejected", "value_limit:user_id")]
    assert graph.profile_of(subject("user_id", "u2")) != graph.profile_of(subject("user_id", "u1"))


def test_limits_drop_the_lowest_priority_identifier_and_keep_the_rest() -> None:
    rules = Rules((TypeRule("user_id", 1), TypeRule("email", 1), TypeRule("anonymous_id", 5)))
    graph = Graph()
    run(
        graph,
        observe(1, userId="u1", traits={"email": "a@x.io"}, message_type="identify", rules=rules),
        rules=rules,
    )
    second = observe(
        2, userId="u1", anonymousId="an", traits={"email": "b@x.io"}, message_type="identify", rules=rules
    )
    decided = run(graph, second, rules=rules)
    profile = graph.profile_of(subject("user_id", "u1"))
    assert graph.profile_of(subject("anonymous_id", "an")) is None  # dropped first (lowest), still failing
    assert graph.profile_of(subject("email", "b@x.io")) is None
    assert [x.rule for x in decided if isinstance(x, d.Rejected)] == [
        "value_limit:email",
        "value_limit:email",
    ]
    assert profile is not None


def test_a_limit_window_counts_only_recent_links() -> None:
    rules = Rules((TypeRule("user_id", 1), TypeRule("anonymous_id", 1, window_seconds=3600)))
    graph = Graph()
    run(graph, observe(1, userId="u1", anonymousId="a1", rules=rules, minutes=0), rules=rules)
    refused = run(graph, observe(2, userId="u1", anonymousId="a2", rules=rules, minutes=30), rules=rules)
    assert [type(x).__name__ for x in refused] == ["Rejected"]
    later = run(graph, observe(3, userId="u1", anonymousId="a3", rules=rules, minutes=120), rules=rules)
    assert [type(x).__name__ for x in later] == ["Linked"]


def test_max_merges_caps_how_many_profiles_fold_into_one() -> None:
    rules = Rules(default_rules().rules, max_merges=1)
    graph = Graph()
    run(
        graph,
        observe(1, anonymousId="a1"),
        observe(2, anonymousId="a2"),
        observe(3, anonymousId="a3"),
        rules=rules,
    )
    run(graph, observe(4, userId="u", anonymousId="a1"), rules=rules)
    assert [type(x).__name__ for x in run(graph, observe(5, userId="u", anonymousId="a2"), rules=rules)] == [
        "Merged"
    ]
    refused = run(graph, observe(6, userId="u", anonymousId="a3"), rules=rules)
    assert [x.rule for x in refused if isinstance(x, d.Rejected)] == ["max_merges"]


def test_split_identifier_moves_it_and_prevent_relink_keeps_it_apart() -> None:
    graph = Graph()
    run(graph, observe(1, userId="u1", anonymousId="a1"), observe(2, userId="u1", anonymousId="shared"))
    profile = graph.profile_of(subject("user_id", "u1"))
    assert profile is not None
    split = split_identifier(
        graph,
        profile,
        subject("anonymous_id", "shared"),
        decision_id="s1",
        new_profile="p-new",
        reason="shared tablet",
        prevent_relink=True,
        at=T0,
    )
    graph.apply(split)
    assert graph.profile_of(subject("anonymous_id", "shared")) == "p-new"
    refused = run(graph, observe(3, userId="u1", anonymousId="shared"))
    assert [x.rule for x in refused if isinstance(x, d.Rejected)] == ["prevented_relink"]
    assert graph.profile_of(subject("anonymous_id", "shared")) == "p-new"


def test_undoing_a_merge_revives_the_merged_profile() -> None:
    graph = Graph()
    run(
        graph,
        observe(1, anonymousId="a1"),
        observe(2, anonymousId="b1", context={"device": {"id": "d-b"}}),
        observe(3, userId="u", anonymousId="a1"),
    )
    decided = run(graph, observe(4, userId="u", anonymousId="b1"))
    (merge,) = decided
    assert isinstance(merge, d.Merged)
    split = undo_merge(
        graph,
        merge.profile,
        merge.merged,
        decision_id="s",
        reason="wrong",
        prevent_relink=False,
        at=T0 + timedelta(days=1),
        undone=merge.decision_id,
    )
    graph.apply(split)
    assert graph.profile_of(subject("anonymous_id", "b1")) == merge.merged
    assert graph.profile_of(subject("device_id", "d-b")) == merge.merged
    assert graph.profile_of(subject("user_id", "u")) == merge.profile
    assert graph.merges(merge.profile) == 0


def test_erasure_removes_the_whole_profile_and_its_subjects_never_link_again() -> None:
    graph = Graph()
    run(graph, observe(1, userId="u1", anonymousId="a1"), observe(2, anonymousId="other"))
    profile, gone = graph.erase(subject("user_id", "u1"))
    assert profile is not None and set(gone) == {subject("user_id", "u1"), subject("anonymous_id", "a1")}
    assert run(graph, observe(3, anonymousId="a1")) == []
    assert graph.profile_of(subject("anonymous_id", "a1")) is None
    assert len(graph.nodes) == 1


def test_undoing_a_link_decision_moves_that_identifier_and_refusals_cannot_be_undone() -> None:
    graph = Graph()
    run(graph, observe(1, userId="u1"))
    (link,) = run(graph, observe(2, userId="u1", anonymousId="kiosk"))
    assert isinstance(link, d.Linked)
    kwargs = {"decision_id": "s", "new_profile": "cut", "reason": "r", "prevent_relink": False, "at": T0}
    request = SplitRequest(undo_id=link.decision_id, undo_kind="link", undo_target=link.subject)
    graph.apply(plan_split(graph, link.profile, request, **kwargs))  # type: ignore[arg-type]
    assert graph.profile_of(subject("anonymous_id", "kiosk")) == "cut"
    with pytest.raises(InvalidInput, match="decision_id"):
        plan_split(graph, link.profile, SplitRequest(undo_id="x", undo_kind="refuse"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="only identifier"):
        plan_split(graph, "cut", SplitRequest(subject=subject("anonymous_id", "kiosk")), **kwargs)  # type: ignore[arg-type]
