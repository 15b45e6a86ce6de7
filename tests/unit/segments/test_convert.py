"""Condition and ComputedTrait messages ↔ domain trees: round trips, and every bad field named by its path."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.common.v1 import identity_pb2, message_pb2, time_pb2
from cdp.errors import InvalidInput
from cdp.segments.v1 import segments_service_pb2 as pb
from services.segments import convert
from services.segments.domain.conditions import (
    Agg,
    Aggregate,
    And,
    AudienceCond,
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
    walk,
)
from tests.unit.segments.test_language import aggregates, trees

DAY = 86_400_000_000


def value(**kind: object) -> struct_pb2.Value:
    return struct_pb2.Value(**kind)  # type: ignore[arg-type]


def fits(node: Condition) -> bool:
    """What the contract carries exactly: no path into a computed trait, integers a double holds."""
    values: list[object] = []
    for part in walk(node):
        specs = part.steps if isinstance(part, Funnel) else ()
        if isinstance(part, ComputedCond):
            if part.cond.path:
                return False
            values.append(part.cond.value)
        elif isinstance(part, TraitCond):
            values.append(part.cond.value)
        elif isinstance(part, EventCond):
            values.append(part.value)
            specs = (part.aggregate.events,)
        values.extend(cond.value for spec in specs for cond in spec.where)
    flat = [item for value in values for item in (value if isinstance(value, tuple) else (value,))]
    return all(not isinstance(item, int) or abs(item) < 2**53 for item in flat)


def all_of(*conditions: pb.Condition) -> pb.Condition:
    return pb.Condition(all_of=pb.ConditionGroup(conditions=list(conditions)))


def violations(message: pb.Condition) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as raised:
        convert.condition_from_proto(message, "audience.condition")
    return [(v.field, v.description) for v in raised.value.violations]


def test_every_kind_of_node_converts_both_ways() -> None:
    where = (ValueCond("revenue", Op.GT, 10), ValueCond("tags", Op.IN, ("a", 2)))
    node = And(
        (
            TraitCond(ValueCond("plan", Op.EQ, "pro")),
            Or((ConsentCond("marketing"), AudienceCond("vip"))),
            Not(IdentifierCond("external:crm_id")),
            IdentifierCond("email"),
            ComputedCond("ltv", ValueCond("", Op.GE, 100.5)),
            EventCond(
                Aggregate(EventSpec("track", "Order Completed", where), window=Window(within=30 * DAY)),
                Op.GE,
                2,
            ),
            EventCond(Aggregate(EventSpec("page"), Agg.SUM, "amount", Window(start=5, end=10)), Op.LT, 3),
            EventCond(Aggregate(EventSpec("identify"), Agg.LAST, "plan", Window(end=10)), Op.NOT_EXISTS),
            Funnel((EventSpec("screen", "Home"), EventSpec("group")), 7 * DAY),
            TraitCond(ValueCond("seen", Op.WITHIN_LAST, 3600)),
            TraitCond(ValueCond("age", Op.IN_BAND, "25-34")),
        )
    )
    message = convert.condition_to_proto(node)
    assert message.all_of.conditions[5].event.within_last == duration_pb2.Duration(seconds=30 * 86_400)
    assert message.all_of.conditions[6].event.between.end == timestamp_pb2.Timestamp(nanos=10_000)
    assert message.all_of.conditions[2].negation.identifier == pb.IdentifierCondition(
        type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace="crm_id"
    )
    assert convert.condition_from_proto(message) == node


@settings(max_examples=300, deadline=None)
@given(trees().filter(fits))
def test_round_trip_through_the_contract(node: Condition) -> None:
    assert convert.condition_from_proto(convert.condition_to_proto(node)) == node


@settings(max_examples=200, deadline=None)
@given(aggregates())
def test_computed_traits_round_trip(aggregate: Aggregate) -> None:
    message = pb.ComputedTrait(computed_trait_id="ltv", display_name="LTV")
    convert.aggregate_to_proto(aggregate, message)
    assert message.display_name == "LTV"
    assert convert.aggregate_from_proto(message) == aggregate


def test_integral_numbers_become_ints_and_lists_tuples() -> None:
    message = pb.Condition(
        trait=pb.ValueCondition(
            path="n",
            operator=pb.OPERATOR_IN,
            value=value(
                list_value=struct_pb2.ListValue(values=[value(number_value=2.0), value(number_value=2.5)])
            ),
        )
    )
    node = convert.condition_from_proto(message)
    assert isinstance(node, TraitCond) and node.cond.value == (2, 2.5) and type(node.cond.value[0]) is int


def test_an_empty_event_condition_means_did_it_at_least_once() -> None:
    message = pb.Condition(event=pb.EventCondition(event="Signed Up"))
    assert convert.condition_from_proto(message) == EventCond(
        Aggregate(EventSpec("track", "Signed Up")), Op.GE, 1
    )
    message = pb.Condition(event=pb.EventCondition(event="Signed Up", count=3))
    assert convert.condition_from_proto(message) == EventCond(
        Aggregate(EventSpec("track", "Signed Up")), Op.GE, 3
    )
    never = pb.Condition(event=pb.EventCondition(event="X", count_operator=pb.OPERATOR_EQUALS, count=0))
    assert convert.condition_from_proto(never) == EventCond(Aggregate(EventSpec("track", "X")), Op.EQ, 0)


def test_exists_ignores_the_value_as_the_contract_says() -> None:
    message = pb.Condition(
        trait=pb.ValueCondition(path="a", operator=pb.OPERATOR_EXISTS, value=value(bool_value=True))
    )
    assert convert.condition_from_proto(message) == TraitCond(ValueCond("a", Op.EXISTS))


def test_violations_name_each_bad_field_by_its_path() -> None:
    message = all_of(
        pb.Condition(trait=pb.ValueCondition(path="plan", value=value(string_value="pro"))),
        pb.Condition(trait=pb.ValueCondition(path="plan", operator=99, value=value(string_value="pro"))),  # type: ignore[arg-type]
        pb.Condition(
            trait=pb.ValueCondition(
                path="", operator=pb.OPERATOR_EQUALS, value=value(list_value=struct_pb2.ListValue())
            )
        ),
        pb.Condition(any_of=pb.ConditionGroup()),
        pb.Condition(),
        pb.Condition(negation=pb.Condition(consent=pb.ConsentCondition())),
    )
    assert violations(message) == [
        ("audience.condition.all_of.conditions[0].trait.operator", "is required"),
        ("audience.condition.all_of.conditions[1].trait.operator", "99 is not a known operator"),
        ("audience.condition.all_of.conditions[2].trait.path", "is required"),
        ("audience.condition.all_of.conditions[3].any_of.conditions", "needs at least one condition"),
        ("audience.condition.all_of.conditions[4]", "is required (set one kind of condition)"),
        ("audience.condition.all_of.conditions[5].negation.consent.purpose", "is required"),
    ]


def test_values_must_suit_their_operator() -> None:
    def trait(operator: pb.Operator, **kind: object) -> pb.Condition:
        return pb.Condition(trait=pb.ValueCondition(path="a", operator=operator, value=value(**kind)))

    listed = struct_pb2.ListValue(values=[value(string_value="x")])
    message = all_of(
        trait(pb.OPERATOR_EQUALS, list_value=listed),
        trait(pb.OPERATOR_IN, string_value="x"),
        trait(pb.OPERATOR_GREATER_THAN, bool_value=True),
        trait(pb.OPERATOR_EQUALS, struct_value=struct_pb2.Struct()),
        pb.Condition(trait=pb.ValueCondition(path="a", operator=pb.OPERATOR_EQUALS)),
        trait(pb.OPERATOR_WITHIN_LAST, number_value=1.5),
    )
    found = dict(violations(message))
    prefix = "audience.condition.all_of.conditions"
    assert found[f"{prefix}[0].trait.value"] == "a list is only for in and not in, not for ="
    assert found[f"{prefix}[1].trait.value"].startswith("in needs a list of values")
    assert found[f"{prefix}[2].trait.value"] == "> compares numbers or strings, not true"
    assert found[f"{prefix}[3].trait.value"].startswith("is an object or a list")
    assert found[f"{prefix}[4].trait.value"] == "is required for ="
    assert found[f"{prefix}[5].trait.value"] == "within last needs a positive whole number of seconds"


def test_event_conditions_are_checked_field_by_field() -> None:
    message = all_of(
        pb.Condition(event=pb.EventCondition()),
        pb.Condition(event=pb.EventCondition(message_type=message_pb2.MESSAGE_TYPE_ALIAS)),
        pb.Condition(event=pb.EventCondition(message_type=message_pb2.MESSAGE_TYPE_IDENTIFY, event="x")),
        pb.Condition(event=pb.EventCondition(event="X", aggregation=pb.AGGREGATION_SUM)),
        pb.Condition(
            event=pb.EventCondition(event="X", aggregation=pb.AGGREGATION_MOST_FREQUENT, property="p")
        ),
        pb.Condition(event=pb.EventCondition(event="X", count_operator=pb.OPERATOR_CONTAINS)),
        pb.Condition(event=pb.EventCondition(event="X", within_last=duration_pb2.Duration(seconds=-1))),
        pb.Condition(event=pb.EventCondition(event="X", between=time_pb2.TimeRange())),
        pb.Condition(event=pb.EventCondition(event="X", aggregation=42)),  # type: ignore[arg-type]
    )
    prefix = "audience.condition.all_of.conditions"
    assert violations(message) == [
        (f"{prefix}[0].event.event", "is required for TRACK"),
        (f"{prefix}[1].event.message_type", "ALIAS messages are not counted by conditions"),
        (f"{prefix}[2].event.event", "is only for TRACK, PAGE and SCREEN"),
        (f"{prefix}[3].event.property", 'sum() needs the property it reads, e.g. sum("revenue")'),
        (f"{prefix}[3].event.count_operator", "is required"),
        (
            f"{prefix}[4].event.aggregation",
            'most_frequent() is only for computed traits: define one and compare it with trait("…") in the audience',
        ),
        (f"{prefix}[4].event.count_operator", "is required"),
        (
            f"{prefix}[5].event.count_operator",
            "count() is compared with a whole number by =, !=, <, <=, > or >=",
        ),
        (f"{prefix}[6].event.within_last", "must be positive, in whole microseconds"),
        (f"{prefix}[7].event.between", "needs a start or an end"),
        (f"{prefix}[8].event.aggregation", "42 is not a known aggregation"),
    ]


def test_funnels_identifiers_and_depth() -> None:
    step = pb.EventCondition(event="A")
    deep = pb.Condition(consent=pb.ConsentCondition(purpose="p"))
    for _ in range(10):
        deep = pb.Condition(negation=deep)
    message = all_of(
        pb.Condition(funnel=pb.FunnelCondition(steps=[step])),
        pb.Condition(funnel=pb.FunnelCondition(steps=[step, pb.EventCondition(event="B", property="x")])),
        pb.Condition(identifier=pb.IdentifierCondition(type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL)),
        pb.Condition(
            identifier=pb.IdentifierCondition(type=identity_pb2.IDENTIFIER_TYPE_EMAIL, namespace="x")
        ),
        pb.Condition(identifier=pb.IdentifierCondition()),
        deep,
    )
    prefix = "audience.condition.all_of.conditions"
    assert violations(message) == [
        (f"{prefix}[0].funnel.steps", "needs at least two steps"),
        (f"{prefix}[1].funnel.steps[1].aggregation", "a funnel step has no aggregation"),
        (f"{prefix}[2].identifier.namespace", "is required for EXTERNAL (lower_snake_case)"),
        (f"{prefix}[3].identifier.namespace", "is only for EXTERNAL identifiers"),
        (f"{prefix}[4].identifier.type", "is required"),
        (prefix + "[5]" + ".negation" * 9, "nests deeper than 10 levels"),
    ]


def test_computed_trait_definitions_are_checked() -> None:
    with pytest.raises(InvalidInput) as raised:
        convert.aggregate_from_proto(
            pb.ComputedTrait(
                computed_trait_id="x",
                within_last=duration_pb2.Duration(seconds=60),
                between=time_pb2.TimeRange(start=timestamp_pb2.Timestamp(seconds=1)),
            )
        )
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("computed_trait.aggregation", "is required"),
        ("computed_trait.event", "is required for TRACK"),
        ("computed_trait.between", "set within_last or between, not both"),
    ]
    most = pb.ComputedTrait(
        aggregation=pb.AGGREGATION_MOST_FREQUENT, message_type=message_pb2.MESSAGE_TYPE_PAGE
    )
    most.property = "path"
    assert convert.aggregate_from_proto(most) == Aggregate(EventSpec("page"), Agg.MOST_FREQUENT, "path")


@pytest.mark.parametrize(
    "node",
    [
        ComputedCond("address", ValueCond("country", Op.EQ, "FR")),
        EventCond(Aggregate(EventSpec("page"), window=Window(within=1, start=0)), Op.GE, 1),
        EventCond(Aggregate(EventSpec("page")), Op.GE, 1.5),
    ],
)
def test_what_the_contract_cannot_carry_is_a_value_error(node: Condition) -> None:
    with pytest.raises(ValueError):
        convert.condition_to_proto(node)


@given(st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_survive_as_numbers(number: float) -> None:
    back = convert.condition_from_proto(convert.condition_to_proto(TraitCond(ValueCond("n", Op.EQ, number))))
    assert back == TraitCond(ValueCond("n", Op.EQ, number))
