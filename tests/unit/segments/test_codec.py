"""Condition trees ↔ the JSON kept in events: exact round trips, plain JSON, malformed input refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.segments.domain.codec import (
    aggregate_from_json,
    aggregate_to_json,
    condition_from_json,
    condition_to_json,
)
from services.segments.domain.conditions import (
    MAX_DEPTH,
    Agg,
    Aggregate,
    And,
    Band,
    Condition,
    EventCond,
    EventSpec,
    Not,
    Op,
    Or,
    TraitCond,
    ValueCond,
    Window,
)
from services.segments.domain.errors import DefinitionError
from tests.unit.segments.test_language import LEAVES, aggregates, trees

BANDED = TraitCond(ValueCond("age", Op.IN_BAND, "25-34", Band("age", "25-34", 25, 35.0)))
OPEN_BAND = TraitCond(ValueCond("age", Op.IN_BAND, "65+", Band("age", "65+", 65.5, None)))
ODD_TREES: list[Condition] = [
    And((BANDED,)),  # one-part groups are kept as they are
    Or(
        (OPEN_BAND, Not(And(()))),
    ),
    EventCond(Aggregate(EventSpec("page"), Agg.COUNT, None, Window(within=5, start=1, end=9)), Op.EQ, 0),
]


def stored(data: dict[str, Any]) -> Any:
    """What a JSON column or event payload gives back."""
    return json.loads(json.dumps(data, allow_nan=False))


def test_the_format_is_plain_and_leaves_defaults_out() -> None:
    node = And(
        (
            TraitCond(ValueCond("plan", Op.EQ, "pro")),
            EventCond(Aggregate(EventSpec("track", "Order Completed"), window=Window(within=30)), Op.GE, 2),
        )
    )
    assert condition_to_json(node) == {
        "kind": "and",
        "parts": [
            {"kind": "trait", "path": "plan", "op": "=", "value": "pro"},
            {
                "kind": "event",
                "aggregate": {
                    "events": {"message_type": "track", "name": "Order Completed"},
                    "agg": "count",
                    "window": {"within": 30},
                },
                "op": ">=",
                "value": 2,
            },
        ],
    }


@pytest.mark.parametrize("node", ODD_TREES)
def test_bands_one_part_groups_and_mixed_windows_survive(node: Condition) -> None:
    assert repr(condition_from_json(stored(condition_to_json(node)))) == repr(node)


@settings(max_examples=300, deadline=None)
@given(trees(st.one_of(LEAVES, st.sampled_from([BANDED, OPEN_BAND]))))
def test_round_trip_is_exact(node: Condition) -> None:
    assert repr(condition_from_json(stored(condition_to_json(node)))) == repr(node)


@settings(max_examples=200, deadline=None)
@given(aggregates())
def test_aggregates_round_trip(aggregate: Aggregate) -> None:
    assert repr(aggregate_from_json(stored(aggregate_to_json(aggregate)))) == repr(aggregate)


def test_lists_come_back_as_tuples() -> None:
    node = TraitCond(ValueCond("plan", Op.IN, ("a", 1, None)))
    assert condition_from_json(stored(condition_to_json(node))) == node


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (None, "condition: is not a condition"),
        ({"kind": "xor", "parts": []}, "condition: unknown kind 'xor'"),
        ({"kind": ["and"]}, "unknown kind"),
        ({"kind": "and"}, "condition: lacks parts"),
        ({"kind": "and", "parts": {}}, "condition.parts: is not a list"),
        (
            {"kind": "not", "part": {"kind": "consent", "purpose": 3}},
            "condition.part.purpose: is not a string",
        ),
        ({"kind": "trait", "path": "a", "op": "==", "value": 1}, "condition.op: unknown operator '=='"),
        ({"kind": "trait", "path": "a", "op": "=", "value": {"x": 1}}, "condition.value: is not a string"),
        ({"kind": "trait", "path": "a", "op": "in", "value": [[1]]}, "condition.value[0]: is not a string"),
        ({"kind": "trait", "path": "a", "op": "=", "value": float("inf")}, "is not a finite number"),
        ({"kind": "trait", "path": "a", "op": "=", "value": 1, "extra": 1}, "has unknown fields extra"),
        (
            {"kind": "trait", "path": "a", "op": "in_band", "value": "x", "band": {"label": "x"}},
            "condition.band: lacks attribute, lower, upper",
        ),
        (
            {
                "kind": "event",
                "op": ">=",
                "value": 1,
                "aggregate": {"events": {"message_type": "track"}, "agg": "x"},
            },
            "condition.aggregate.agg: unknown aggregation 'x'",
        ),
        (
            {
                "kind": "event",
                "op": ">=",
                "value": 1,
                "aggregate": {
                    "events": {"message_type": "track"},
                    "agg": "count",
                    "window": {"within": True},
                },
            },
            "condition.aggregate.window.within: is not an integer",
        ),
        (
            {"kind": "funnel", "steps": [{"message_type": "track", "where": [{"path": "a"}]}]},
            "condition.steps[0].where[0]: lacks op, value",
        ),
    ],
)
def test_malformed_json_is_refused_with_where(data: Any, words: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        condition_from_json(data)
    assert words in str(raised.value)


def test_too_deep_json_is_refused_before_recursing() -> None:
    data: dict[str, Any] = {"kind": "consent", "purpose": "p"}
    for _ in range(MAX_DEPTH):
        data = {"kind": "not", "part": data}
    with pytest.raises(DefinitionError, match="nests deeper than"):
        condition_from_json(data)


def test_aggregate_json_is_checked_too() -> None:
    with pytest.raises(DefinitionError, match="aggregate: lacks events"):
        aggregate_from_json({"agg": "count"})
    with pytest.raises(DefinitionError, match=r"aggregate\.property: is not a string"):
        aggregate_from_json({"events": {"message_type": "page"}, "agg": "sum", "property": 1})
