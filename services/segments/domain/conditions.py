"""The syntax tree of audiences and computed traits: one tree, two evaluators (Python per profile, SQL in bulk).

The audience language (`language.py`), the gRPC `Condition` message (`convert.py`) and the JSON kept in
`AudienceDefined.definition` (`codec.py`) all produce these nodes; `evaluate.py` and `sqlcompile.py` read them.
Times are integer microseconds since the epoch and durations integer microseconds, so both evaluators do the
same exact arithmetic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

Scalar: TypeAlias = str | int | float | bool | None
"""A condition's value: what JSON gives (lists only for IN / NOT_IN, as tuples)."""


class Op(enum.StrEnum):
    """How a value found on a profile or an event compares with the condition's value (see docs/segments.md)."""

    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    WITHIN_LAST = "within_last"
    """An ISO-8601 timestamp within the last `value` seconds of evaluation time."""
    IN_BAND = "in_band"
    """A number inside a band of the attribute catalog; the band's bounds are resolved when the audience is
    defined (`ValueCond.band`)."""


ORDERING = frozenset({Op.LT, Op.LE, Op.GT, Op.GE})
NEGATIVE = frozenset({Op.NE, Op.NOT_IN, Op.NOT_EXISTS})
"""Operators that hold when the value is absent: evaluated as the negation of their positive twin."""
POSITIVE_OF = {Op.NE: Op.EQ, Op.NOT_IN: Op.IN, Op.NOT_EXISTS: Op.EXISTS}


class Agg(enum.StrEnum):
    """How the matching events of a profile combine into one value."""

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVERAGE = "average"
    FIRST = "first"
    LAST = "last"
    MOST_FREQUENT = "most_frequent"
    UNIQUE_COUNT = "unique_count"
    UNIQUE_LIST = "unique_list"


NUMERIC_AGGS = frozenset({Agg.SUM, Agg.AVERAGE})
"""Aggregations over numbers only (other kinds of value are skipped)."""
CONDITION_AGGS = frozenset(
    {Agg.COUNT, Agg.SUM, Agg.MIN, Agg.MAX, Agg.AVERAGE, Agg.FIRST, Agg.LAST, Agg.UNIQUE_COUNT}
)
"""Aggregations an audience condition may compare inline; the others only through a computed trait."""
UNIQUE_LIST_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Band:
    """A band of the attribute catalog: `lower <= value < upper`, either bound open when None."""

    attribute: str
    label: str
    lower: float | None
    upper: float | None


@dataclass(frozen=True, slots=True)
class ValueCond:
    """A field (dot-separated `path` into traits or event properties) compared with `value`."""

    path: str
    op: Op
    value: Scalar | tuple[Scalar, ...] = None
    band: Band | None = None
    """IN_BAND only: the band named by `value`, as the catalog defined it when the condition was."""


@dataclass(frozen=True, slots=True)
class Window:
    """Which events count: a sliding window (`within`: the last µs before evaluation), a fixed range
    (`start <= time < end`, either side open), or all time (every field None)."""

    within: int | None = None
    start: int | None = None
    end: int | None = None

    @property
    def sliding(self) -> bool:
        """Whether the window moves with evaluation time (memberships then change as time passes)."""
        return self.within is not None


ALL_TIME = Window()


@dataclass(frozen=True, slots=True)
class EventSpec:
    """Which messages of a profile match: a type, a name (None = any) and conditions on the properties."""

    message_type: str = "track"
    name: str | None = None
    where: tuple[ValueCond, ...] = ()


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A value computed from a profile's matching events in a window: a computed trait's body, and an event
    condition's left-hand side."""

    events: EventSpec
    agg: Agg = Agg.COUNT
    property: str | None = None
    """The property aggregated (None only for COUNT)."""
    window: Window = ALL_TIME


@dataclass(frozen=True, slots=True)
class And:
    """Every part holds."""

    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one part holds."""

    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Condition


@dataclass(frozen=True, slots=True)
class TraitCond:
    """A condition on the profile's traits (`traits.plan = "pro"`)."""

    cond: ValueCond


@dataclass(frozen=True, slots=True)
class EventCond:
    """An aggregate of the profile's events compared with a value (`event("Order Completed").count(within
    30d) >= 2`). An aggregate with no matching events is absent: COUNT is 0, the others hold only for
    NOT_EXISTS, NE and NOT_IN."""

    aggregate: Aggregate
    op: Op
    value: Scalar | tuple[Scalar, ...] = None


@dataclass(frozen=True, slots=True)
class ComputedCond:
    """A computed trait's current value compared with a value (`trait("lifetime_value") > 100`)."""

    trait_id: str
    cond: ValueCond
    """`path` is empty (the whole value) or a path into an object value."""


@dataclass(frozen=True, slots=True)
class ConsentCond:
    """The profile's latest decision on a purpose is a grant (`consent("marketing")`)."""

    purpose: str


@dataclass(frozen=True, slots=True)
class AudienceCond:
    """The profile is a member of another audience (`audience("churned")`); cycles are refused."""

    audience_id: str


@dataclass(frozen=True, slots=True)
class IdentifierCond:
    """The profile holds an identifier of a type (`has_identifier("email")`)."""

    identifier_type: str


@dataclass(frozen=True, slots=True)
class Funnel:
    """The profile did each step in order, the last within `within` µs of the first (None = any time)."""

    steps: tuple[EventSpec, ...]
    within: int | None = None


Condition: TypeAlias = (
    And
    | Or
    | Not
    | TraitCond
    | EventCond
    | ComputedCond
    | ConsentCond
    | AudienceCond
    | IdentifierCond
    | Funnel
)

MAX_DEPTH = 10
"""Condition trees nest at most this deep (the contract's limit)."""


def children(node: Condition) -> tuple[Condition, ...]:
    """The direct sub-conditions of a node."""
    if isinstance(node, And | Or):
        return node.parts
    if isinstance(node, Not):
        return (node.part,)
    return ()


def walk(node: Condition) -> list[Condition]:
    """Every node of the tree, parents before children."""
    found = [node]
    for child in children(node):
        found.extend(walk(child))
    return found


def depth(node: Condition) -> int:
    """How deep the tree nests (a leaf is 1)."""
    return 1 + max((depth(child) for child in children(node)), default=0)


def audiences_named(node: Condition) -> set[str]:
    """The audiences a condition refers to directly."""
    return {part.audience_id for part in walk(node) if isinstance(part, AudienceCond)}


def computed_traits_named(node: Condition) -> set[str]:
    """The computed traits a condition refers to."""
    return {part.trait_id for part in walk(node) if isinstance(part, ComputedCond)}


@dataclass(frozen=True, slots=True)
class EventNeeds:
    """Which of a profile's messages some definition can look at, and whether it reads their properties: the
    evaluator loads only these (a profile's history is mostly page views no audience mentions)."""

    kinds: frozenset[tuple[str, str | None]] = frozenset()
    """(message type, name): a name of None matches every message of the type."""
    properties: bool = False

    def __or__(self, other: EventNeeds) -> EventNeeds:
        return EventNeeds(self.kinds | other.kinds, self.properties or other.properties)


def needs_of_aggregate(aggregate: Aggregate) -> EventNeeds:
    """What an aggregate reads: its spec's messages, their properties when it filters or aggregates one."""
    spec = aggregate.events
    return EventNeeds(
        frozenset({(spec.message_type, spec.name)}), bool(spec.where) or aggregate.property is not None
    )


def event_needs(node: Condition) -> EventNeeds:
    """What a condition reads of a profile's messages (computed traits it names are counted by their own
    definitions)."""
    found = EventNeeds()
    for part in walk(node):
        if isinstance(part, EventCond):
            found = found | needs_of_aggregate(part.aggregate)
        elif isinstance(part, Funnel):
            found = found | EventNeeds(
                frozenset((step.message_type, step.name) for step in part.steps),
                any(step.where for step in part.steps),
            )
    return found


def sliding_windows(node: Condition) -> list[int]:
    """The sliding windows (µs) in a condition: evaluation time matters to it when any exist."""
    found: list[int] = []
    for part in walk(node):
        if isinstance(part, EventCond) and part.aggregate.window.within is not None:
            found.append(part.aggregate.window.within)
    return found
