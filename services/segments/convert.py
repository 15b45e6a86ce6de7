"""Protobuf ↔ condition trees and aggregates for the segments edge.

Reading checks what the contract requires and what the domain's rules refuse (`domain/checks.py`), and names
every bad field by its path (`audience.condition.all_of.conditions[1].trait.operator`) in one InvalidInput.
Writing is total for the trees reading builds; a tree the contract cannot carry raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from cdp.common.v1 import identity_pb2, message_pb2, time_pb2
from cdp.errors import FieldViolation, InvalidInput
from cdp.segments.v1 import segments_service_pb2 as pb
from services.segments.domain import checks
from services.segments.domain.conditions import (
    MAX_DEPTH,
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
    Scalar,
    TraitCond,
    ValueCond,
    Window,
)

_OPERATORS: list[tuple[pb.Operator, Op]] = [
    (pb.OPERATOR_EQUALS, Op.EQ),
    (pb.OPERATOR_NOT_EQUALS, Op.NE),
    (pb.OPERATOR_LESS_THAN, Op.LT),
    (pb.OPERATOR_LESS_THAN_OR_EQUAL, Op.LE),
    (pb.OPERATOR_GREATER_THAN, Op.GT),
    (pb.OPERATOR_GREATER_THAN_OR_EQUAL, Op.GE),
    (pb.OPERATOR_CONTAINS, Op.CONTAINS),
    (pb.OPERATOR_STARTS_WITH, Op.STARTS_WITH),
    (pb.OPERATOR_ENDS_WITH, Op.ENDS_WITH),
    (pb.OPERATOR_IN, Op.IN),
    (pb.OPERATOR_NOT_IN, Op.NOT_IN),
    (pb.OPERATOR_EXISTS, Op.EXISTS),
    (pb.OPERATOR_NOT_EXISTS, Op.NOT_EXISTS),
    (pb.OPERATOR_WITHIN_LAST, Op.WITHIN_LAST),
    (pb.OPERATOR_IN_BAND, Op.IN_BAND),
]
OPERATORS: dict[int, Op] = dict(_OPERATORS)
OPERATOR_ENUMS: dict[Op, pb.Operator] = {value: number for number, value in _OPERATORS}
_AGGREGATIONS: list[tuple[pb.Aggregation, Agg]] = [
    (pb.AGGREGATION_COUNT, Agg.COUNT),
    (pb.AGGREGATION_SUM, Agg.SUM),
    (pb.AGGREGATION_MIN, Agg.MIN),
    (pb.AGGREGATION_MAX, Agg.MAX),
    (pb.AGGREGATION_AVERAGE, Agg.AVERAGE),
    (pb.AGGREGATION_FIRST, Agg.FIRST),
    (pb.AGGREGATION_LAST, Agg.LAST),
    (pb.AGGREGATION_MOST_FREQUENT, Agg.MOST_FREQUENT),
    (pb.AGGREGATION_UNIQUE_COUNT, Agg.UNIQUE_COUNT),
    (pb.AGGREGATION_UNIQUE_LIST, Agg.UNIQUE_LIST),
]
AGGREGATIONS: dict[int, Agg] = dict(_AGGREGATIONS)
AGGREGATION_ENUMS: dict[Agg, pb.Aggregation] = {value: number for number, value in _AGGREGATIONS}
_MESSAGE_TYPES: list[tuple[message_pb2.MessageType, str]] = [
    (message_pb2.MESSAGE_TYPE_TRACK, "track"),
    (message_pb2.MESSAGE_TYPE_PAGE, "page"),
    (message_pb2.MESSAGE_TYPE_SCREEN, "screen"),
    (message_pb2.MESSAGE_TYPE_IDENTIFY, "identify"),
    (message_pb2.MESSAGE_TYPE_GROUP, "group"),
]
MESSAGE_TYPES: dict[int, str] = dict(_MESSAGE_TYPES)
MESSAGE_TYPE_ENUMS: dict[str, message_pb2.MessageType] = {value: number for number, value in _MESSAGE_TYPES}
_IDENTIFIER_TYPES: list[tuple[identity_pb2.IdentifierType, str]] = [
    (identity_pb2.IDENTIFIER_TYPE_USER_ID, "user_id"),
    (identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, "anonymous_id"),
    (identity_pb2.IDENTIFIER_TYPE_EMAIL, "email"),
    (identity_pb2.IDENTIFIER_TYPE_PHONE, "phone"),
    (identity_pb2.IDENTIFIER_TYPE_DEVICE_ID, "device_id"),
    (identity_pb2.IDENTIFIER_TYPE_ADVERTISING_ID, "advertising_id"),
]
IDENTIFIER_TYPES: dict[int, str] = dict(_IDENTIFIER_TYPES)
IDENTIFIER_TYPE_ENUMS: dict[str, identity_pb2.IdentifierType] = {
    value: number for number, value in _IDENTIFIER_TYPES
}
EXACT_INTEGERS = 2**53
"""Beyond this a double no longer holds every integer: such numbers stay floats."""


def condition_from_proto(message: pb.Condition, path: str = "condition") -> Condition:
    """A Condition message as a tree; InvalidInput names every bad field under `path`."""
    reader = _Reader()
    node = reader.condition(message, path, 1)
    if reader.violations or node is None:
        raise InvalidInput(reader.violations or [FieldViolation(path, "is required")])
    return node


def aggregate_from_proto(message: pb.ComputedTrait, path: str = "computed_trait") -> Aggregate:
    """A ComputedTrait's definition fields as an aggregate; InvalidInput names every bad field."""
    reader = _Reader()
    aggregate = reader.computed_trait(message, path)
    if reader.violations or aggregate is None:
        raise InvalidInput(reader.violations or [FieldViolation(f"{path}.aggregation", "is required")])
    return aggregate


# --- Reading ------------------------------------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads one message, collecting violations instead of stopping at the first."""

    violations: list[FieldViolation] = field(default_factory=list)

    def bad(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def check(self, path: str, problem: str | None) -> bool:
        """Record `problem` (if any) at `path`; whether there was none."""
        if problem is not None:
            self.bad(path, problem)
        return problem is None

    def condition(self, message: pb.Condition, path: str, level: int) -> Condition | None:
        kind = message.WhichOneof("node")
        if kind is None:
            self.bad(path, "is required (set one kind of condition)")
            return None
        if level > MAX_DEPTH:
            self.bad(path, f"nests deeper than {MAX_DEPTH} levels")
            return None
        at = f"{path}.{kind}"
        if kind in ("all_of", "any_of"):
            return self.group(getattr(message, kind), at, level, And if kind == "all_of" else Or)
        if kind == "negation":
            part = self.condition(message.negation, at, level + 1)
            return Not(part) if part is not None else None
        return self.leaf(message, kind, at)

    def group(
        self, message: pb.ConditionGroup, path: str, level: int, kind: type[And] | type[Or]
    ) -> Condition | None:
        if not message.conditions:
            self.bad(f"{path}.conditions", "needs at least one condition")
            return None
        parts = [
            self.condition(part, f"{path}.conditions[{i}]", level + 1)
            for i, part in enumerate(message.conditions)
        ]
        found = tuple(part for part in parts if part is not None)
        return kind(found) if len(found) == len(parts) else None

    def leaf(self, message: pb.Condition, kind: str, path: str) -> Condition | None:
        if kind == "trait":
            cond = self.value_cond(message.trait, path)
            return TraitCond(cond) if cond is not None else None
        if kind == "computed_trait":
            return self.computed(message.computed_trait, path)
        if kind == "event":
            return self.event(message.event, path)
        if kind == "funnel":
            return self.funnel(message.funnel, path)
        if kind == "identifier":
            return self.identifier(message.identifier, path)
        if kind == "audience":
            audience_id = self.required(message.audience.audience_id, f"{path}.audience_id")
            return AudienceCond(audience_id) if audience_id else None
        purpose = self.required(message.consent.purpose, f"{path}.purpose")
        return ConsentCond(purpose) if purpose else None

    def required(self, text: str, path: str) -> str:
        if not text:
            self.bad(path, "is required")
        return text

    def operator(self, number: int, path: str) -> Op | None:
        if number == pb.OPERATOR_UNSPECIFIED:
            self.bad(path, "is required")
            return None
        op = OPERATORS.get(number)
        if op is None:
            self.bad(path, f"{number} is not a known operator")
        return op

    def compared(
        self, op: Op | None, message: struct_pb2.Value | None, path: str
    ) -> Scalar | tuple[Scalar, ...]:
        """The value a condition compares with (`message` None: unset)."""
        if op in (Op.EXISTS, Op.NOT_EXISTS):
            return None  # the contract says the value is ignored
        if message is None:
            if op is not None:
                self.bad(path, f"is required for {checks.op_word(op)}")
            return None
        return self.value(message, path)

    def value(self, message: struct_pb2.Value, path: str) -> Scalar | tuple[Scalar, ...]:
        kind = message.WhichOneof("kind")
        if kind == "list_value":
            items = [self.scalar(item, f"{path}[{i}]") for i, item in enumerate(message.list_value.values)]
            return tuple(items)
        return self.scalar(message, path)

    def scalar(self, message: struct_pb2.Value, path: str) -> Scalar:
        kind = message.WhichOneof("kind")
        if kind == "number_value":
            number = message.number_value
            if not math.isfinite(number):
                self.bad(path, "is not a finite number")
            elif number.is_integer() and abs(number) < EXACT_INTEGERS:
                return int(number)
            return number
        if kind == "string_value":
            return message.string_value
        if kind == "bool_value":
            return message.bool_value
        if kind in ("struct_value", "list_value"):
            self.bad(path, "is an object or a list: conditions compare strings, numbers, booleans or null")
        return None

    def value_cond(self, message: pb.ValueCondition, path: str) -> ValueCond | None:
        cond_path = self.required(message.path, f"{path}.path")
        op = self.operator(message.operator, f"{path}.operator")
        value = self.compared(op, message.value if message.HasField("value") else None, f"{path}.value")
        if op is None or not cond_path:
            return None
        if not self.check(f"{path}.value", checks.value_problem(op, value)):
            return None
        return ValueCond(cond_path, op, value)

    def computed(self, message: pb.ComputedTraitCondition, path: str) -> Condition | None:
        trait_id = self.required(message.computed_trait_id, f"{path}.computed_trait_id")
        op = self.operator(message.operator, f"{path}.operator")
        value = self.compared(op, message.value if message.HasField("value") else None, f"{path}.value")
        if op is Op.IN_BAND:
            self.bad(f"{path}.operator", "IN_BAND is for traits and event properties")
            return None
        if op is None or not trait_id or not self.check(f"{path}.value", checks.value_problem(op, value)):
            return None
        return ComputedCond(trait_id, ValueCond("", op, value))

    def spec(self, number: int, name: str, where: Sequence[pb.ValueCondition], path: str) -> EventSpec | None:
        message_type = self.message_type(number, f"{path}.message_type")
        conds = [self.value_cond(cond, f"{path}.where[{i}]") for i, cond in enumerate(where)]
        if message_type is None:
            return None
        if message_type not in checks.NAMED_TYPES:
            if name:
                self.bad(f"{path}.event", "is only for TRACK, PAGE and SCREEN")
            found = None
        else:
            found = name or None
            if message_type == "track" and not name:
                self.bad(f"{path}.event", "is required for TRACK")
        if any(cond is None for cond in conds) or (message_type == "track" and not name):
            return None
        return EventSpec(message_type, found, tuple(cond for cond in conds if cond is not None))

    def message_type(self, number: int, path: str) -> str | None:
        if number == message_pb2.MESSAGE_TYPE_UNSPECIFIED:
            return "track"
        if number == message_pb2.MESSAGE_TYPE_ALIAS:
            self.bad(path, "ALIAS messages are not counted by conditions")
            return None
        found = MESSAGE_TYPES.get(number)
        if found is None:
            self.bad(path, f"{number} is not a known message type")
        return found

    def aggregation(self, number: int, path: str, *, unset: Agg | None) -> Agg | None:
        if number == pb.AGGREGATION_UNSPECIFIED:
            if unset is None:
                self.bad(path, "is required")
            return unset
        found = AGGREGATIONS.get(number)
        if found is None:
            self.bad(path, f"{number} is not a known aggregation")
        return found

    def event(self, message: pb.EventCondition, path: str) -> Condition | None:
        spec = self.spec(message.message_type, message.event, message.where, path)
        window = self.window(message, path)
        agg = self.aggregation(message.aggregation, f"{path}.aggregation", unset=Agg.COUNT)
        if agg is None:
            return None
        prop = message.property or None
        self.check(f"{path}.aggregation", checks.inline_problem(agg))
        self.check(f"{path}.property", checks.property_problem(agg, prop))
        comparison = (
            self.count(message, path) if agg is Agg.COUNT else self.aggregate_value(message, agg, path)
        )
        if spec is None or window is None or comparison is None or self.violations:
            return None
        return EventCond(Aggregate(spec, agg, prop, window), *comparison)

    def count(self, message: pb.EventCondition, path: str) -> tuple[Op, Scalar] | None:
        if message.HasField("value"):
            self.bad(f"{path}.value", "is for aggregations other than COUNT (a count is compared with count)")
        if message.count_operator == pb.OPERATOR_UNSPECIFIED:
            return Op.GE, max(message.count, 1)  # the contract: "at least max(count, 1) times"
        op = self.operator(message.count_operator, f"{path}.count_operator")
        if op is None or not self.check(
            f"{path}.count_operator", checks.comparison_problem(Agg.COUNT, op, 0)
        ):
            return None
        return op, message.count

    def aggregate_value(
        self, message: pb.EventCondition, agg: Agg, path: str
    ) -> tuple[Op, Scalar | tuple[Scalar, ...]] | None:
        if message.count:
            self.bad(f"{path}.count", "is for COUNT (other aggregations are compared with value)")
        op = self.operator(message.count_operator, f"{path}.count_operator")
        value = self.compared(op, message.value if message.HasField("value") else None, f"{path}.value")
        if op is None or not self.check(f"{path}.value", checks.comparison_problem(agg, op, value)):
            return None
        return op, value

    def window(self, message: pb.EventCondition | pb.ComputedTrait, path: str) -> Window | None:
        within = between = None
        if message.HasField("within_last"):
            within = self.duration(message.within_last, f"{path}.within_last")
            if within is None:
                return None
        if message.HasField("between"):
            between = self.time_range(message.between, f"{path}.between")
            if between is None:
                return None
            if within is not None:
                self.bad(f"{path}.between", "set within_last or between, not both")
                return None
        return between or Window(within=within)

    def duration(self, message: duration_pb2.Duration, path: str) -> int | None:
        micros, rest = divmod(message.seconds * 1_000_000_000 + message.nanos, 1_000)
        if rest or micros <= 0:
            self.bad(path, "must be positive, in whole microseconds")
            return None
        return micros

    def time_range(self, message: time_pb2.TimeRange, path: str) -> Window | None:
        start = self.instant(message.start, f"{path}.start") if message.HasField("start") else None
        end = self.instant(message.end, f"{path}.end") if message.HasField("end") else None
        if start is None and end is None:
            self.bad(path, "needs a start or an end")
            return None
        window = Window(start=start, end=end)
        return window if self.check(path, checks.window_problem(window)) else None

    def instant(self, message: timestamp_pb2.Timestamp, path: str) -> int | None:
        micros, rest = divmod(message.seconds * 1_000_000_000 + message.nanos, 1_000)
        if rest:
            self.bad(path, "must be in whole microseconds")
            return None
        return micros

    def funnel(self, message: pb.FunnelCondition, path: str) -> Condition | None:
        if len(message.steps) < 2:
            self.bad(f"{path}.steps", "needs at least two steps")
        steps = [self.step(step, f"{path}.steps[{i}]") for i, step in enumerate(message.steps)]
        within = self.duration(message.within, f"{path}.within") if message.HasField("within") else None
        if (
            len(message.steps) < 2
            or any(step is None for step in steps)
            or (message.HasField("within") and within is None)
        ):
            return None
        return Funnel(tuple(step for step in steps if step is not None), within)

    def step(self, message: pb.EventCondition, path: str) -> EventSpec | None:
        """A funnel step: its counts and windows are ignored (the contract says so); an aggregation is refused."""
        if message.aggregation not in (pb.AGGREGATION_UNSPECIFIED, pb.AGGREGATION_COUNT) or message.property:
            self.bad(f"{path}.aggregation", "a funnel step has no aggregation")
        return self.spec(message.message_type, message.event, message.where, path)

    def identifier(self, message: pb.IdentifierCondition, path: str) -> Condition | None:
        if message.type == identity_pb2.IDENTIFIER_TYPE_EXTERNAL:
            namespace = message.namespace.strip()
            found = checks.EXTERNAL_PREFIX + namespace
            if not namespace or checks.identifier_problem(found) is not None:
                self.bad(f"{path}.namespace", "is required for EXTERNAL (lower_snake_case)")
                return None
            return IdentifierCond(found)
        if message.namespace:
            self.bad(f"{path}.namespace", "is only for EXTERNAL identifiers")
        if message.type == identity_pb2.IDENTIFIER_TYPE_UNSPECIFIED:
            self.bad(f"{path}.type", "is required")
            return None
        name = IDENTIFIER_TYPES.get(message.type)
        if name is None:
            self.bad(f"{path}.type", f"{message.type} is not a known identifier type")
            return None
        return IdentifierCond(name) if not message.namespace else None

    def computed_trait(self, message: pb.ComputedTrait, path: str) -> Aggregate | None:
        agg = self.aggregation(message.aggregation, f"{path}.aggregation", unset=None)
        spec = self.spec(message.message_type, message.event, message.where, path)
        window = self.window(message, path)
        prop = message.property or None
        if agg is not None:
            self.check(f"{path}.property", checks.property_problem(agg, prop))
        if agg is None or spec is None or window is None or self.violations:
            return None
        return Aggregate(spec, agg, prop, window)


# --- Writing ------------------------------------------------------------------------------------------------


def condition_to_proto(node: Condition) -> pb.Condition:
    """A tree as a Condition message."""
    if isinstance(node, And):
        return pb.Condition(all_of=pb.ConditionGroup(conditions=[condition_to_proto(p) for p in node.parts]))
    if isinstance(node, Or):
        return pb.Condition(any_of=pb.ConditionGroup(conditions=[condition_to_proto(p) for p in node.parts]))
    if isinstance(node, Not):
        return pb.Condition(negation=condition_to_proto(node.part))
    if isinstance(node, TraitCond):
        return pb.Condition(trait=_value_condition(node.cond))
    if isinstance(node, ComputedCond):
        return pb.Condition(computed_trait=_computed_condition(node))
    if isinstance(node, EventCond):
        return pb.Condition(event=_event_condition(node))
    if isinstance(node, Funnel):
        return pb.Condition(funnel=_funnel_condition(node))
    if isinstance(node, AudienceCond):
        return pb.Condition(audience=pb.AudienceCondition(audience_id=node.audience_id))
    if isinstance(node, ConsentCond):
        return pb.Condition(consent=pb.ConsentCondition(purpose=node.purpose))
    if isinstance(node, IdentifierCond):
        return pb.Condition(identifier=_identifier_condition(node.identifier_type))
    raise TypeError(f"not a condition: {node!r}")


def aggregate_to_proto(aggregate: Aggregate, into: pb.ComputedTrait) -> None:
    """Write an aggregate into a ComputedTrait's definition fields (the others are left as they are)."""
    for name in ("aggregation", "message_type", "event", "where", "property", "within_last", "between"):
        into.ClearField(name)
    into.aggregation = AGGREGATION_ENUMS[aggregate.agg]
    _write_spec(aggregate.events, into)
    if aggregate.property is not None:
        into.property = aggregate.property
    _write_window(aggregate.window, into)


def _value_condition(cond: ValueCond) -> pb.ValueCondition:
    message = pb.ValueCondition(path=cond.path, operator=OPERATOR_ENUMS[cond.op])
    if cond.op not in (Op.EXISTS, Op.NOT_EXISTS):
        message.value.CopyFrom(value_message(cond.value))
    return message


def _computed_condition(node: ComputedCond) -> pb.ComputedTraitCondition:
    if node.cond.path:
        raise ValueError(
            "ComputedTraitCondition has no path: the contract cannot carry trait(…).path conditions"
        )
    message = pb.ComputedTraitCondition(
        computed_trait_id=node.trait_id, operator=OPERATOR_ENUMS[node.cond.op]
    )
    if node.cond.op not in (Op.EXISTS, Op.NOT_EXISTS):
        message.value.CopyFrom(value_message(node.cond.value))
    return message


def _event_condition(node: EventCond) -> pb.EventCondition:
    aggregate = node.aggregate
    message = pb.EventCondition(count_operator=OPERATOR_ENUMS[node.op])
    _write_spec(aggregate.events, message)
    _write_window(aggregate.window, message)
    if aggregate.agg is Agg.COUNT:
        if not isinstance(node.value, int) or isinstance(node.value, bool):
            raise ValueError(f"a count is compared with an integer, not {node.value!r}")
        message.count = node.value
        return message
    message.aggregation = AGGREGATION_ENUMS[aggregate.agg]
    message.property = aggregate.property or ""
    if node.op not in (Op.EXISTS, Op.NOT_EXISTS):
        message.value.CopyFrom(value_message(node.value))
    return message


def _funnel_condition(node: Funnel) -> pb.FunnelCondition:
    message = pb.FunnelCondition()
    for spec in node.steps:
        _write_spec(spec, message.steps.add())
    if node.within is not None:
        message.within.CopyFrom(_duration(node.within))
    return message


def _identifier_condition(identifier_type: str) -> pb.IdentifierCondition:
    if identifier_type.startswith(checks.EXTERNAL_PREFIX):
        namespace = identifier_type.removeprefix(checks.EXTERNAL_PREFIX)
        return pb.IdentifierCondition(type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace=namespace)
    return pb.IdentifierCondition(type=IDENTIFIER_TYPE_ENUMS[identifier_type])


def _write_spec(spec: EventSpec, into: pb.EventCondition | pb.ComputedTrait) -> None:
    into.message_type = MESSAGE_TYPE_ENUMS[spec.message_type]
    into.event = spec.name or ""
    into.where.extend(_value_condition(cond) for cond in spec.where)


def _write_window(window: Window, into: pb.EventCondition | pb.ComputedTrait) -> None:
    if window.within is not None and (window.start is not None or window.end is not None):
        raise ValueError("a window is either sliding or fixed: the contract cannot carry both")
    if window.within is not None:
        into.within_last.CopyFrom(_duration(window.within))
    if window.start is not None:
        into.between.start.CopyFrom(timestamp_message(window.start))
    if window.end is not None:
        into.between.end.CopyFrom(timestamp_message(window.end))


def _duration(micros: int) -> duration_pb2.Duration:
    seconds, rest = divmod(micros, 1_000_000)
    return duration_pb2.Duration(seconds=seconds, nanos=rest * 1_000)


def timestamp_message(micros: int) -> timestamp_pb2.Timestamp:
    """µs since the epoch as a protobuf Timestamp."""
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1_000)


def value_message(value: Scalar | tuple[Scalar, ...]) -> struct_pb2.Value:
    """A condition's value as a google.protobuf.Value."""
    if isinstance(value, tuple):
        return struct_pb2.Value(
            list_value=struct_pb2.ListValue(values=[value_message(item) for item in value])
        )
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, str):
        return struct_pb2.Value(string_value=value)
    return struct_pb2.Value(number_value=float(value))
