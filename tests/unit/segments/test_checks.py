"""Definition checks: depth, references and cycles, bands from the catalog, values that suit operators."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.segments.domain.checks import (
    check_aggregate,
    check_condition,
    check_depth,
    check_references,
    resolve_bands,
)
from services.segments.domain.conditions import (
    MAX_DEPTH,
    Agg,
    Aggregate,
    And,
    AudienceCond,
    Band,
    ComputedCond,
    Condition,
    ConsentCond,
    EventCond,
    EventSpec,
    Funnel,
    IdentifierCond,
    Not,
    Op,
    Or,
    TraitCond,
    ValueCond,
    Window,
)
from services.segments.domain.errors import DefinitionError
from services.segments.domain.language import parse_condition

AGE_BANDS = (Band("age", "18-24", 18, 25), Band("age", "25-34", 25, 35), Band("age", "65+", 65, None))


def definitions(**found: str) -> dict[str, Condition]:
    return {audience_id: parse_condition(text) for audience_id, text in found.items()}


def refused(
    audience_id: str, node: Condition, known: dict[str, Condition], traits: Sequence[str] = ()
) -> str:
    with pytest.raises(DefinitionError) as raised:
        check_references(audience_id, node, known.get, lambda trait_id: trait_id in traits)
    return str(raised.value)


def test_depth_is_bounded() -> None:
    node: Condition = ConsentCond("p")
    for _ in range(MAX_DEPTH - 1):
        node = Not(node)
    check_depth(node)
    with pytest.raises(DefinitionError, match=f"nest 11 levels deep; at most {MAX_DEPTH}"):
        check_depth(Not(node))


def test_references_to_known_audiences_and_traits_pass() -> None:
    known = definitions(b='audience("c") and audience("d")', c='audience("d")', d="traits.x exists")
    node = parse_condition('audience("b") and trait("ltv") > 1 and audience("d")')
    check_references("a", node, known.get, lambda trait_id: trait_id == "ltv")


def test_unknown_audiences_and_computed_traits_are_refused() -> None:
    known = definitions(b='audience("gone")')
    assert refused("a", parse_condition('audience("nope")'), known) == 'unknown audience "nope"'
    check_references("a", parse_condition('audience("b")'), known.get, lambda _: False)  # b's concern
    assert refused("a", parse_condition('trait("ltv") > 1'), known) == 'unknown computed trait "ltv"'


def test_cycles_are_refused_naming_their_path() -> None:
    assert (
        refused("a", parse_condition('audience("a")'), {})
        == "audiences would refer to one another in a cycle: a → a"
    )
    known = definitions(b='audience("a")')
    assert refused("a", parse_condition('audience("b")'), known) == (
        "audiences would refer to one another in a cycle: a → b → a"
    )
    known = definitions(b='not audience("c")', c='audience("d") or traits.x exists', d='audience("b")')
    assert refused("a", parse_condition('traits.y exists and audience("b")'), known) == (
        "audiences would refer to one another in a cycle: b → c → d → b"
    )


def test_bands_are_filled_in_from_the_catalog_on_traits_and_where_clauses() -> None:
    node = parse_condition(
        'traits.age in band "25-34" and event("X", where age in band "65+").count() > 1 '
        'and (event("A", where age in band "18-24") then event("B")) and traits.plan = "pro"'
    )
    resolved = resolve_bands(node, lambda path: AGE_BANDS if path == "age" else ())
    assert isinstance(resolved, And)
    trait, event, funnel, plan = resolved.parts
    assert isinstance(trait, TraitCond) and trait.cond.band == AGE_BANDS[1]
    assert isinstance(event, EventCond) and event.aggregate.events.where[0].band == AGE_BANDS[2]
    assert isinstance(funnel, Funnel) and funnel.steps[0].where[0].band == AGE_BANDS[0]
    assert plan == node.parts[3]  # type: ignore[union-attr]


def test_an_unknown_band_names_the_attribute_and_the_bands_it_has() -> None:
    with pytest.raises(DefinitionError) as raised:
        resolve_bands(parse_condition('not traits.age in band "30-40"'), lambda path: AGE_BANDS)
    assert str(raised.value) == '"30-40" is not a band of age: its bands are "18-24", "25-34", "65+"'
    with pytest.raises(DefinitionError, match="the catalog defines no bands for it"):
        resolve_bands(parse_condition('traits.income in band "high"'), lambda path: ())


SPEC = EventSpec("track", "X")


@pytest.mark.parametrize(
    ("node", "words"),
    [
        (And(()), "a group needs at least one condition"),
        (Funnel((SPEC,)), "a funnel needs at least two steps"),
        (Funnel((SPEC, SPEC), 0), "a funnel's time must be longer than zero"),
        (TraitCond(ValueCond("a", Op.IN, "x")), "traits.a: in needs a list"),
        (TraitCond(ValueCond("", Op.EXISTS)), "a trait condition: the path is empty"),
        (TraitCond(ValueCond("a", Op.EXISTS, 1)), "exists takes no value"),
        (TraitCond(ValueCond("a", Op.EQ, float("nan"))), "nan is not a number"),
        (ComputedCond("c", ValueCond("", Op.IN_BAND, "x")), "in band is for traits and event properties"),
        (EventCond(Aggregate(SPEC, Agg.MOST_FREQUENT, "p"), Op.EQ, "a"), "only for computed traits"),
        (EventCond(Aggregate(SPEC, Agg.SUM), Op.GT, 1), "sum() needs the property"),
        (EventCond(Aggregate(SPEC), Op.GT, True), "count() is compared with a whole number"),
        (EventCond(Aggregate(SPEC, window=Window(within=1, end=2)), Op.GT, 1), "sliding (within) or fixed"),
        (EventCond(Aggregate(SPEC, window=Window(start=2, end=2)), Op.GT, 1), "must start before it ends"),
        (EventCond(Aggregate(EventSpec("alias")), Op.GT, 1), 'unknown message type "alias"'),
        (EventCond(Aggregate(EventSpec("track")), Op.GT, 1), "needs the event's name"),
        (Funnel((SPEC, EventSpec("group", "g"))), "group messages have no name"),
        (IdentifierCond("external:"), 'unknown identifier type "external:"'),
        (Or((ConsentCond(""),)), "consent(…) needs a purpose"),
        (Not(AudienceCond("")), "audience(…) needs an audience id"),
    ],
)
def test_check_condition_refuses_what_no_way_in_would_accept(node: Condition, words: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        check_condition(node)
    assert words in str(raised.value)


def test_check_aggregate_allows_what_only_computed_traits_may_use() -> None:
    check_aggregate(Aggregate(SPEC, Agg.UNIQUE_LIST, "sku"))
    with pytest.raises(DefinitionError) as raised:
        check_aggregate(Aggregate(SPEC, Agg.UNIQUE_LIST))
    assert raised.value.field == "computed_trait"
