"""The incremental evaluator: one profile's facts against a condition tree, in Python, at an instant.

`sqlcompile.py` compiles the same tree to SQL over the read model for the whole population; the two must
agree (tests/unit/segments/test_agreement.py holds them equal on random profiles, histories and trees).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.segments.domain.conditions import (
    UNIQUE_LIST_LIMIT,
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
from services.segments.domain.values import EMPTY, NUMBER, SCALAR_KINDS, Doc, holds, value_of


@dataclass(frozen=True, slots=True)
class EventFact:
    """One message of a profile as conditions see it."""

    position: int
    """Global position in the log: orders events of the same instant."""
    time: int
    """The message's timestamp, µs since the epoch."""
    message_type: str
    name: str | None
    properties: Doc


@dataclass
class ProfileFacts:
    """What conditions may ask of one profile."""

    profile_id: str
    traits: Doc = EMPTY
    events: Sequence[EventFact] = ()
    """In (time, position) order."""
    computed: Mapping[str, Doc] = field(default_factory=dict)
    """Computed trait id → its current value's document (absent: no value)."""
    consent: Mapping[str, bool] = field(default_factory=dict)
    """Purpose → the latest decision."""
    identifier_types: frozenset[str] = frozenset()


Definitions = Callable[[str], Condition | None]
"""An audience id → its condition (None: unknown or archived: `audience(...)` of it never holds)."""


def no_audiences(_: str) -> Condition | None:
    """Definitions for a tree that names no other audience."""
    return None


def evaluate(node: Condition, facts: ProfileFacts, now: int, audiences: Definitions = no_audiences) -> bool:
    """Whether the profile satisfies the tree at instant `now` (µs)."""
    if isinstance(node, And):
        return all(evaluate(part, facts, now, audiences) for part in node.parts)
    if isinstance(node, Or):
        return any(evaluate(part, facts, now, audiences) for part in node.parts)
    if isinstance(node, Not):
        return not evaluate(node.part, facts, now, audiences)
    if isinstance(node, TraitCond):
        return holds(node.cond, facts.traits, now)
    if isinstance(node, EventCond):
        value = compute(node.aggregate, facts.events, now)
        return holds(ValueCond("", node.op, node.value), Doc.of(value) if value is not None else EMPTY, now)
    if isinstance(node, ComputedCond):
        return holds(node.cond, facts.computed.get(node.trait_id, EMPTY), now)
    if isinstance(node, ConsentCond):
        return facts.consent.get(node.purpose) is True
    if isinstance(node, IdentifierCond):
        return node.identifier_type in facts.identifier_types
    if isinstance(node, AudienceCond):
        other = audiences(node.audience_id)
        return other is not None and evaluate(other, facts, now, audiences)
    if isinstance(node, Funnel):
        return funnel_holds(node, facts.events, now)
    raise TypeError(f"not a condition: {node!r}")


def matches(spec: EventSpec, event: EventFact, now: int) -> bool:
    """The event is of the spec's type and name and its properties satisfy every `where`."""
    return (
        event.message_type == spec.message_type
        and (spec.name is None or event.name == spec.name)
        and all(holds(cond, event.properties, now) for cond in spec.where)
    )


def in_window(window: Window, time: int, now: int) -> bool:
    """Whether an event at `time` counts in the window evaluated at `now`."""
    if window.within is not None and time < now - window.within:
        return False
    if window.start is not None and time < window.start:
        return False
    return window.end is None or time < window.end


def compute(aggregate: Aggregate, events: Sequence[EventFact], now: int) -> Any:
    """The aggregate's value over the matching events (JSON), or None when it has none (COUNT: 0)."""
    chosen = [
        e for e in events if in_window(aggregate.window, e.time, now) and matches(aggregate.events, e, now)
    ]
    agg = aggregate.agg
    if agg is Agg.COUNT:
        return len(chosen)
    values = [leaf for e in chosen if (leaf := _property(e, aggregate.property)) is not None]
    if agg is Agg.UNIQUE_COUNT:
        return len({leaf.key for leaf in values})
    if agg is Agg.UNIQUE_LIST:
        return _unique_list(values)
    if agg is Agg.FIRST:
        return value_of(values[0]) if values else None
    if agg is Agg.LAST:
        return value_of(values[-1]) if values else None
    if agg is Agg.MOST_FREQUENT:
        return _most_frequent(values)
    numbers = [leaf.num for leaf in values if leaf.kind == NUMBER and leaf.num is not None]
    if not numbers:
        return None
    if agg is Agg.SUM:
        return _number(sum(numbers))
    if agg is Agg.MIN:
        return _number(min(numbers))
    if agg is Agg.MAX:
        return _number(max(numbers))
    if agg is Agg.AVERAGE:
        return sum(numbers) / len(numbers)
    raise ValueError(f"unknown aggregation {agg}")


def funnel_holds(funnel: Funnel, events: Sequence[EventFact], now: int) -> bool:
    """Some event of step 1 is followed by one of step 2, then step 3…, the last within `within` of the first."""
    starts = [i for i, e in enumerate(events) if matches(funnel.steps[0], e, now)]
    for start in starts:
        limit = None if funnel.within is None else events[start].time + funnel.within
        at, complete = start, True
        for step in funnel.steps[1:]:
            at = next((j for j in range(at + 1, len(events)) if matches(step, events[j], now)), -1)
            if at < 0 or (limit is not None and events[at].time > limit):
                complete = False
                break
        if complete:
            return True
    return False


def next_change(
    aggregates: Sequence[Aggregate], cond_paths: Sequence[ValueCond], facts: ProfileFacts, now: int
) -> int | None:
    """The first instant after `now` at which time alone can change what the profile's conditions see: a
    matching event leaving a sliding window, or a trait's timestamp leaving a WITHIN_LAST range."""
    due: int | None = None
    for aggregate in aggregates:
        within = aggregate.window.within
        if within is None:
            continue
        for event in facts.events:
            leaves = event.time + within + 1
            if leaves > now and (due is None or leaves < due) and matches(aggregate.events, event, now):
                due = leaves
    for cond in cond_paths:
        leaf = facts.traits.values.get(cond.path)
        seconds = cond.value
        if leaf is None or leaf.time is None or not isinstance(seconds, int | float):
            continue
        leaves = leaf.time + int(seconds * 1_000_000) + 1
        if leaves > now and (due is None or leaves < due):
            due = leaves
    return due


def timed_parts(node: Condition) -> tuple[list[Aggregate], list[ValueCond]]:
    """What in a tree depends on evaluation time: sliding-window aggregates and WITHIN_LAST trait conditions
    (event property conditions with WITHIN_LAST also do; their events are counted as aggregates)."""
    aggregates: list[Aggregate] = []
    conds: list[ValueCond] = []
    for part in walk(node):
        if isinstance(part, EventCond) and part.aggregate.window.within is not None:
            aggregates.append(part.aggregate)
        elif isinstance(part, TraitCond) and part.cond.op is Op.WITHIN_LAST:
            conds.append(part.cond)
    return aggregates, conds


def _property(event: EventFact, path: str | None) -> Any:
    if path is None:
        return None
    leaf = event.properties.values.get(path)
    return leaf if leaf is not None and leaf.kind in SCALAR_KINDS else None


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _unique_list(values: list[Any]) -> list[Any]:
    seen: set[str | None] = set()
    found: list[Any] = []
    for leaf in reversed(values):  # most recent first
        if leaf.key not in seen:
            seen.add(leaf.key)
            found.append(value_of(leaf))
            if len(found) == UNIQUE_LIST_LIMIT:
                break
    return found


def _most_frequent(values: list[Any]) -> Any:
    if not values:
        return None
    counts = Counter(leaf.key for leaf in values)
    latest = {leaf.key: index for index, leaf in enumerate(values)}
    best = max(counts, key=lambda key: (counts[key], latest[key]))
    return value_of(values[latest[best]])
