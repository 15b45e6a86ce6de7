"""What a definition must satisfy beyond its shape: values that suit their operators, a bounded depth,
references that exist and make no cycle, and bands the attribute catalog knows.

The `*_problem` functions say in plain words what is wrong with one part (None: nothing). Every way in shares
them: the language (which adds a line and column), the gRPC edge (which adds a field path) and
`check_condition` (for trees from anywhere else).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from services.segments.domain.conditions import (
    CONDITION_AGGS,
    MAX_DEPTH,
    ORDERING,
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
    audiences_named,
    children,
    computed_traits_named,
    depth,
)
from services.segments.domain.errors import DefinitionError

MESSAGE_TYPES = ("track", "page", "screen", "identify", "group")
NAMED_TYPES = frozenset({"track", "page", "screen"})
"""Message types that carry a name (`event`, `name`); identify and group messages have none."""
IDENTIFIER_TYPES = ("user_id", "anonymous_id", "email", "phone", "device_id", "advertising_id")
EXTERNAL_PREFIX = "external:"
COUNT_OPS = frozenset({Op.EQ, Op.NE, *ORDERING})
"""How a count is compared: the contract carries it as `count_operator` with an integer `count`."""
NUMERIC_AGGS = frozenset({Agg.COUNT, Agg.SUM, Agg.MIN, Agg.MAX, Agg.AVERAGE, Agg.UNIQUE_COUNT})
"""Aggregations whose value is always a number (MIN and MAX skip what is not one)."""
TEXT_OPS = frozenset({Op.CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH, Op.WITHIN_LAST, Op.IN_BAND})
"""Operators that never hold of a number: refused for numeric aggregations."""

OP_WORDS = {
    Op.NOT_IN: "not in",
    Op.NOT_EXISTS: "not exists",
    Op.WITHIN_LAST: "within last",
    Op.IN_BAND: "in band",
}


def op_word(op: Op) -> str:
    """How the language writes an operator."""
    return OP_WORDS.get(op, op.value)


def describe(value: object) -> str:
    """A value as the language writes it, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "a list"
    return repr(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a number a condition can compare with"
    if value is None or isinstance(value, str | int | float):
        return None
    return f"{type(value).__name__} is not a value (a string, number, true/false or null)"


def value_problem(op: Op, value: object) -> str | None:
    """What is wrong with comparing by `op` with `value`."""
    word = op_word(op)
    if op in (Op.EXISTS, Op.NOT_EXISTS):
        return None if value is None else f"{word} takes no value"
    if op in (Op.IN, Op.NOT_IN):
        if not isinstance(value, tuple):
            return f'{word} needs a list of values, e.g. {word} ["a", "b"]'
        return next((p for item in value if (p := _scalar_problem(item)) is not None), None)
    if isinstance(value, tuple):
        return f"a list is only for in and not in, not for {word}"
    problem = _scalar_problem(value)
    if problem is not None:
        return problem
    if op in ORDERING and (value is None or isinstance(value, bool)):
        return f"{word} compares numbers or strings, not {describe(value)}"
    if op in (Op.STARTS_WITH, Op.ENDS_WITH) and not isinstance(value, str):
        return f"{word} needs a string, not {describe(value)}"
    if op is Op.WITHIN_LAST and (not _is_number(value) or not isinstance(value, int) or value <= 0):
        return "within last needs a positive whole number of seconds"
    if op is Op.IN_BAND and (not isinstance(value, str) or not value):
        return 'in band needs the band\'s label, e.g. in band "25-34"'
    return None


def inline_problem(agg: Agg) -> str | None:
    """Why an audience condition may not compare this aggregation directly."""
    if agg in CONDITION_AGGS:
        return None
    return (
        f"{agg.value}() is only for computed traits: define one and compare it with "
        'trait("…") in the audience'
    )


def property_problem(agg: Agg, prop: str | None) -> str | None:
    """What is wrong with the property an aggregation reads."""
    if agg is Agg.COUNT:
        return None if prop is None else "count() takes no property"
    if not prop:
        return f'{agg.value}() needs the property it reads, e.g. {agg.value}("revenue")'
    return None


def comparison_problem(agg: Agg, op: Op, value: object) -> str | None:
    """What is wrong with comparing an aggregate by `op` with `value`."""
    word = op_word(op)
    if op is Op.IN_BAND:
        return "in band is for traits and event properties, not for aggregates"
    if agg is Agg.COUNT:
        if op not in COUNT_OPS or not _is_number(value) or not isinstance(value, int):
            return "count() is compared with a whole number by =, !=, <, <=, > or >="
        return None
    if agg in NUMERIC_AGGS:
        if op in TEXT_OPS:
            return f"{agg.value}() is a number: {word} does not apply to it"
        items = value if isinstance(value, tuple) else (value,)
        if op not in (Op.EXISTS, Op.NOT_EXISTS) and not all(_is_number(item) for item in items):
            return f"{agg.value}() is a number: compare it with a number, not {describe(value)}"
    return value_problem(op, value)


def spec_problem(spec: EventSpec) -> str | None:
    """What is wrong with the type and name of an event spec."""
    kind = spec.message_type
    if kind not in MESSAGE_TYPES:
        return f'unknown message type "{kind}"; expected track, page, screen, identify or group'
    if kind not in NAMED_TYPES:
        return None if spec.name is None else f"{kind} messages have no name"
    if kind == "track" and spec.name is None:
        return 'event(…) needs the event\'s name, e.g. event("Order Completed")'
    if spec.name == "":
        return f"the name is empty: write {'event' if kind == 'track' else kind}() without one to match any"
    return None


def duration_problem(micros: int | None, what: str = "a duration") -> str | None:
    """What is wrong with a duration (µs)."""
    if micros is not None and micros <= 0:
        return f"{what} must be longer than zero"
    return None


def window_problem(window: Window) -> str | None:
    """What is wrong with a window."""
    if window.within is not None and (window.start is not None or window.end is not None):
        return "a window is either sliding (within) or fixed (since, before, between), not both"
    if window.start is not None and window.end is not None and window.start >= window.end:
        return "a fixed window must start before it ends"
    return duration_problem(window.within, "a window")


def identifier_problem(identifier_type: str) -> str | None:
    """What is wrong with an identifier type's name."""
    if identifier_type in IDENTIFIER_TYPES:
        return None
    namespace = identifier_type.removeprefix(EXTERNAL_PREFIX)
    lower = namespace == namespace.lower() and not any(c.isspace() or not c.isprintable() for c in namespace)
    if namespace != identifier_type and namespace and lower:
        return None
    return (
        f'unknown identifier type "{identifier_type}"; expected {", ".join(IDENTIFIER_TYPES)} or '
        "external:<namespace> (lower case)"
    )


def where_problems(spec: EventSpec) -> Iterator[str]:
    """What is wrong with an event spec, its where clause included."""
    problem = spec_problem(spec)
    if problem is not None:
        yield problem
    for cond in spec.where:
        problem = value_problem(cond.op, cond.value) or _path_problem(cond.path)
        if problem is not None:
            yield f"property {cond.path}: {problem}"


def aggregate_problems(aggregate: Aggregate, *, inline: bool) -> Iterator[str]:
    """What is wrong with an aggregate (`inline`: compared inside an audience, not a computed trait)."""
    yield from where_problems(aggregate.events)
    checks = (
        inline_problem(aggregate.agg) if inline else None,
        property_problem(aggregate.agg, aggregate.property),
        window_problem(aggregate.window),
    )
    yield from (problem for problem in checks if problem is not None)


def _path_problem(path: str) -> str | None:
    return "the path is empty" if not path else None


def node_problems(node: Condition) -> Iterator[str]:
    """What is wrong with one node of a tree (its children are checked on their own)."""
    if isinstance(node, And | Or) and not node.parts:
        yield "a group needs at least one condition"
    elif isinstance(node, TraitCond):
        problem = _path_problem(node.cond.path) or value_problem(node.cond.op, node.cond.value)
        if problem is not None:
            yield f"{f'traits.{node.cond.path}' if node.cond.path else 'a trait condition'}: {problem}"
    elif isinstance(node, ComputedCond):
        problem = "in band is for traits and event properties" if node.cond.op is Op.IN_BAND else None
        problem = problem or value_problem(node.cond.op, node.cond.value)
        problem = problem or ("the computed trait's id is empty" if not node.trait_id else None)
        if problem is not None:
            yield f'trait("{node.trait_id}"): {problem}'
    elif isinstance(node, EventCond):
        yield from aggregate_problems(node.aggregate, inline=True)
        problem = comparison_problem(node.aggregate.agg, node.op, node.value)
        if problem is not None:
            yield problem
    elif isinstance(node, Funnel):
        yield from _funnel_problems(node)
    else:
        yield from _reference_problems(node)


def _funnel_problems(node: Funnel) -> Iterator[str]:
    if len(node.steps) < 2:
        yield "a funnel needs at least two steps"
    for step in node.steps:
        yield from where_problems(step)
    problem = duration_problem(node.within, "a funnel's time")
    if problem is not None:
        yield problem


def _reference_problems(node: Condition) -> Iterator[str]:
    if isinstance(node, ConsentCond) and not node.purpose:
        yield "consent(…) needs a purpose"
    elif isinstance(node, AudienceCond) and not node.audience_id:
        yield "audience(…) needs an audience id"
    elif isinstance(node, IdentifierCond):
        problem = identifier_problem(node.identifier_type)
        if problem is not None:
            yield problem


def check_depth(node: Condition) -> None:
    """Refuse a tree nested deeper than the contract allows."""
    found = depth(node)
    if found > MAX_DEPTH:
        raise DefinitionError(f"conditions nest {found} levels deep; at most {MAX_DEPTH} are allowed")


def check_condition(node: Condition) -> None:
    """Refuse a tree with any problem of shape or value (references aside: `check_references`)."""
    check_depth(node)
    pending = [node]
    while pending:
        part = pending.pop()
        problem = next(node_problems(part), None)
        if problem is not None:
            raise DefinitionError(problem)
        pending.extend(children(part))


def check_aggregate(aggregate: Aggregate) -> None:
    """Refuse a computed trait's aggregate with any problem."""
    problem = next(aggregate_problems(aggregate, inline=False), None)
    if problem is not None:
        raise DefinitionError(problem, field="computed_trait")


def check_references(
    audience_id: str,
    node: Condition,
    lookup: Callable[[str], Condition | None],
    trait_exists: Callable[[str], bool],
) -> None:
    """Refuse unknown computed traits, unknown audiences (named by `node` itself), and references that end up
    back at `audience_id` (the one being defined with `node`) or go round in a loop."""
    for trait_id in sorted(computed_traits_named(node)):
        if not trait_exists(trait_id):
            raise DefinitionError(f'unknown computed trait "{trait_id}"')
    _follow(node, lookup, (audience_id,), set())


def _follow(
    node: Condition,
    lookup: Callable[[str], Condition | None],
    path: tuple[str, ...],
    done: set[str],
) -> None:
    for other in sorted(audiences_named(node)):
        if other in path:
            cycle = " → ".join((*path[path.index(other) :], other))
            raise DefinitionError(f"audiences would refer to one another in a cycle: {cycle}")
        if other in done:
            continue
        found = lookup(other)
        if found is None and len(path) == 1:
            raise DefinitionError(f'unknown audience "{other}"')
        if found is not None:  # an audience further on that is gone is its definer's concern, not this one's
            _follow(found, lookup, (*path, other), done)
        done.add(other)


def resolve_bands(node: Condition, lookup: Callable[[str], Sequence[Band]]) -> Condition:
    """The tree with every IN_BAND condition's band taken from the catalog (`lookup(path)`: the bands of the
    attribute at `path`), on traits and on events' where clauses."""
    if isinstance(node, And):
        return And(tuple(resolve_bands(part, lookup) for part in node.parts))
    if isinstance(node, Or):
        return Or(tuple(resolve_bands(part, lookup) for part in node.parts))
    if isinstance(node, Not):
        return Not(resolve_bands(node.part, lookup))
    if isinstance(node, TraitCond):
        return TraitCond(_band(node.cond, lookup))
    if isinstance(node, EventCond):
        events = _spec_bands(node.aggregate.events, lookup)
        return replace(node, aggregate=replace(node.aggregate, events=events))
    if isinstance(node, Funnel):
        return replace(node, steps=tuple(_spec_bands(step, lookup) for step in node.steps))
    return node


def resolve_aggregate_bands(aggregate: Aggregate, lookup: Callable[[str], Sequence[Band]]) -> Aggregate:
    """The aggregate with its where clause's bands taken from the catalog."""
    return replace(aggregate, events=_spec_bands(aggregate.events, lookup))


def _spec_bands(spec: EventSpec, lookup: Callable[[str], Sequence[Band]]) -> EventSpec:
    if not any(cond.op is Op.IN_BAND for cond in spec.where):
        return spec
    return replace(spec, where=tuple(_band(cond, lookup) for cond in spec.where))


def _band(cond: ValueCond, lookup: Callable[[str], Sequence[Band]]) -> ValueCond:
    if cond.op is not Op.IN_BAND:
        return cond
    bands = list(lookup(cond.path))
    chosen = next((band for band in bands if band.label == cond.value), None)
    if chosen is None:
        known = ", ".join(f'"{band.label}"' for band in bands)
        what = f"its bands are {known}" if bands else "the catalog defines no bands for it"
        raise DefinitionError(f"{describe(cond.value)} is not a band of {cond.path}: {what}")
    return replace(cond, band=chosen)
