"""Hypothesis strategies for the segments evaluators: random populations (traits, events, computed values,
consent, identifiers) and random condition trees over every node kind, drawn from small pools so that
conditions often hit, values of every kind meet every operator, and windows cut through event histories."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from services.segments.domain.conditions import (
    ALL_TIME,
    CONDITION_AGGS,
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
from services.segments.domain.evaluate import Definitions
from services.segments.domain.values import NULL, SCALAR_KINDS, flatten, value_of
from services.segments.loading import EventRecord, ProfileRecord

NOW = 1_700_000_000_000_000
"""Evaluation time (µs), 2023-11-14T22:13:20Z."""
SECOND = 1_000_000
HOUR = 3600 * SECOND

OFFSETS = (-7 * 24 * HOUR, -2 * HOUR, -HOUR - 1, -HOUR, -1, 0, HOUR)
"""Event times relative to NOW: on and just before windows' edges, some in the future; few, so times tie."""
WITHINS = (HOUR, 2 * HOUR, 1, 0)
TIMESTAMPS = (
    "2023-11-14T22:13:20Z",  # NOW
    "2023-11-14T22:12:20Z",  # a minute ago
    "2023-11-14T23:13:20+02:00",  # an hour ago, in another offset
    "2023-11-07T22:13:20Z",  # a week ago
    "2023-11-15T00:00:00Z",  # in the future
    "2023-11-14T22:13:20",  # no offset: not an instant
)
LONG = "x" * 600
STRINGS = (
    "pro",
    "Pro",
    "PRO",
    "free",
    "pr",
    "o",
    "",
    "10",
    "9",
    "1.0",
    "a%b",
    "a_b",
    "%",
    "_",
    "ab",
    "é",
    "Éa",
    "😀",
    "b\\",
    LONG,
    "x" * 512 + "y",
    *TIMESTAMPS,
)
NUMBERS = (-2, -1, 0, 1, 2, 3, 5, 10, 0.5)

HOT: tuple[Any, ...] = ("pro", "Pro", "a%b", "10", "", 0, 1, 2, True, False, None, TIMESTAMPS[1], LONG)
"""Values that profiles and conditions share often, so that conditions hit."""

names = st.sampled_from(("plan", "age", "tags", "address", "a", "a.b", "flag"))
strings = st.one_of(st.sampled_from(STRINGS), st.text(alphabet="aAb%_\\é", max_size=3))
numbers = st.sampled_from(NUMBERS)
hot = st.sampled_from(HOT)
scalars: st.SearchStrategy[Any] = st.one_of(hot, hot, hot, strings, numbers, st.booleans(), st.none())
lists = st.lists(st.one_of(scalars, scalars, st.just({"nested": 1}), st.just([1])), max_size=4)


def documents(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with nested objects, lists, every kind, and keys that spell the same path twice."""
    value: st.SearchStrategy[Any] = st.one_of(scalars, lists)
    if depth > 0:
        value = st.one_of(value, documents(depth - 1))
    return st.dictionaries(names, value, max_size=5)


trait_documents = documents(2)
flat_documents = documents(0)
computed_values = st.one_of(scalars, lists, flat_documents)


@dataclass(frozen=True)
class Population:
    """Profiles, events nobody is known to have done yet, and audience definitions."""

    profiles: tuple[ProfileRecord, ...]
    unattributed: tuple[EventRecord, ...]


event_names = st.sampled_from(("Order", "View", None))
message_types = st.sampled_from(("track", "track", "page"))
small = st.integers(0, 3)
event_properties = st.fixed_dictionaries(
    {"amount": st.one_of(small, small, small, st.booleans(), scalars)},
    optional={
        "item": st.one_of(st.sampled_from(("pro", "Pro", "a%b")), scalars),
        "tags": st.lists(scalars, max_size=3),
        "when": st.sampled_from(TIMESTAMPS),
    },
)


@st.composite
def events_drawn(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "time": NOW + draw(st.sampled_from(OFFSETS)),
        "message_type": draw(message_types),
        "name": draw(event_names),
        "properties": draw(event_properties),
    }


@st.composite
def populations(draw: st.DrawFn, max_profiles: int = 8) -> Population:
    """1 to `max_profiles` profiles with up to 8 events each, and a few unattributed events; event positions
    are a random permutation, so equal times are ordered by position independently of drawing order."""
    count = draw(st.integers(1, max_profiles))
    drafts = [draw(st.lists(events_drawn(), max_size=8)) for _ in range(count)]
    loose = draw(st.lists(events_drawn(), max_size=2))
    total = sum(len(d) for d in drafts) + len(loose)
    positions = iter(draw(st.permutations(range(1, total + 1))))

    def records(drafted: list[dict[str, Any]]) -> tuple[EventRecord, ...]:
        return tuple(EventRecord(position=next(positions), **e) for e in drafted)

    profiles = []
    for index, drafted in enumerate(drafts):
        profile_id = f"p{index}"
        types = draw(st.sets(st.sampled_from(("email", "phone", "user_id")), max_size=2))
        profiles.append(
            ProfileRecord(
                profile_id=profile_id,
                traits=draw(trait_documents),
                events=records(drafted),
                computed=draw(
                    st.dictionaries(
                        st.sampled_from(("ltv", "favorite")),
                        computed_values,
                        max_size=2,
                    )
                ),
                consent=draw(
                    st.dictionaries(st.sampled_from(("marketing", "ads")), st.booleans(), max_size=2)
                ),
                identifiers={f"{profile_id}:{kind}": kind for kind in sorted(types)},
            )
        )
    return Population(tuple(profiles), records(loose))


# Conditions: drawn from a `Grammar`, which a case makes of what its population holds, so that they often hit.

TRAIT_PATHS = ("plan", "age", "tags", "address", "address.plan", "a.b", "a", "flag", "missing")
PROPERTY_PATHS = ("amount", "item", "tags", "when", "missing")
COMPUTED_PATHS = ("", "plan", "a.b")
TEXT_OPS = (Op.CONTAINS, Op.STARTS_WITH, Op.ENDS_WITH)
COMPARISONS = (Op.EQ, Op.NE, Op.LT, Op.LE, Op.GT, Op.GE)
bands = st.builds(
    Band,
    attribute=st.just("age"),
    label=st.just("band"),
    lower=st.one_of(st.none(), st.sampled_from((-1.0, 0.0, 2.0))),
    upper=st.one_of(st.none(), st.sampled_from((1.0, 3.0, 10.0))),
)
windows = st.one_of(
    st.just(ALL_TIME),
    st.just(ALL_TIME),
    st.builds(Window, within=st.sampled_from(WITHINS)),
    st.builds(
        Window,
        start=st.one_of(st.none(), st.sampled_from(OFFSETS).map(lambda o: NOW + o)),
        end=st.one_of(st.none(), st.sampled_from(OFFSETS).map(lambda o: NOW + o)),
    ),
)
trait_paths = st.sampled_from(TRAIT_PATHS)
property_paths = st.sampled_from(PROPERTY_PATHS)
computed_paths = st.sampled_from(COMPUTED_PATHS)
operators = st.one_of(st.sampled_from(list(Op)), st.sampled_from(TEXT_OPS), st.sampled_from(COMPARISONS))


Pair = tuple[str, Any]
"""A path and a scalar found there (list elements included)."""


class Grammar:
    """Strategies for conditions (built once per case: building strategies is what costs). Conditions are
    mostly on a (path, value) pair the population holds, so that they hit; sometimes on anything."""

    def __init__(
        self,
        values: st.SearchStrategy[Any] = scalars,
        traits: Sequence[Pair] = (),
        properties: Sequence[Pair] = (),
        computed: Sequence[Pair] = (),
    ) -> None:
        self.values = values
        self.specs = st.builds(
            EventSpec,
            message_type=st.sampled_from(("track", "track", "track", "page")),
            name=st.sampled_from((None, None, "Order", "View")),
            where=st.one_of(
                st.just(()), st.lists(self.value_conds(property_paths, properties), max_size=2).map(tuple)
            ),
        )
        self.aggregated = st.one_of(property_paths, st.sampled_from(("amount", None)))
        self.event_value = self.value_conds(st.just(""), ())
        self.leaves: st.SearchStrategy[Condition] = st.one_of(
            st.builds(TraitCond, self.value_conds(trait_paths, traits)),
            self.event_conds(),
            st.builds(
                ComputedCond,
                trait_id=st.sampled_from(("ltv", "favorite", "unknown")),
                cond=self.value_conds(computed_paths, computed),
            ),
            st.builds(ConsentCond, st.sampled_from(("marketing", "ads", "analytics"))),
            st.builds(IdentifierCond, st.sampled_from(("email", "phone", "device"))),
            st.builds(
                Funnel,
                steps=st.lists(self.specs, min_size=1, max_size=3).map(tuple),
                within=st.one_of(st.none(), st.sampled_from(WITHINS)),
            ),
        )

    @classmethod
    def of(cls, population: Population) -> Grammar:
        """The grammar of conditions on what this population holds."""
        values: dict[str, Any] = {}
        traits: dict[tuple[str, str], Pair] = {}
        properties: dict[tuple[str, str], Pair] = {}
        computed: dict[tuple[str, str], Pair] = {}
        for record in population.profiles:
            documents = [
                (dict(record.traits), traits),
                *((dict(e.properties), properties) for e in record.events),
                *((value, computed) for value in record.computed.values() if value is not None),
            ]
            for document, pairs in documents:
                for leaf in flatten(document):
                    if leaf.kind in SCALAR_KINDS or leaf.kind == NULL:
                        value = value_of(leaf)
                        values.setdefault(leaf.key or "null", value)
                        pairs.setdefault((leaf.path, leaf.key or "null"), (leaf.path, value))
        ordered = sorted(values.values(), key=repr)
        values_drawn = st.one_of(st.sampled_from(ordered), scalars) if ordered else scalars
        return cls(
            values_drawn,
            sorted(traits.values(), key=repr),
            sorted(properties.values(), key=repr),
            sorted(computed.values(), key=repr),
        )

    def value_conds(
        self, paths: st.SearchStrategy[str], pairs: Sequence[Pair]
    ) -> st.SearchStrategy[ValueCond]:
        """A field compared with a value that suits the operator (mostly) or not (sometimes): two times in
        three a path and value the population holds (the value changed to suit the operator)."""
        values = self.values
        held = st.sampled_from(pairs) if pairs else None

        @st.composite
        def drawn(draw: st.DrawFn) -> ValueCond:
            op = draw(operators)
            if held is not None and draw(st.integers(0, 2)) > 0:
                path, value = draw(held)
            else:
                path, value = draw(paths), draw(values)
            band = None
            if op in (Op.IN, Op.NOT_IN):
                value = (value, *draw(st.lists(values, max_size=2)))
            elif op is Op.WITHIN_LAST:
                value = draw(st.sampled_from((60, 3600, 7200, 10**6, 0.5, 60.0, value)))
            elif op is Op.IN_BAND:
                band = draw(st.one_of(bands, st.none()))
                value = "band"
            elif op in (Op.EXISTS, Op.NOT_EXISTS):
                value = None
            elif op in TEXT_OPS and isinstance(value, str) and draw(st.booleans()):
                value = _piece(draw, value, op)
            elif op in COMPARISONS and isinstance(value, int) and not isinstance(value, bool):
                value += draw(st.sampled_from((0, 0, -1, 1)))
            return ValueCond(path, op, value, band)

        return drawn()

    def event_conds(self) -> st.SearchStrategy[EventCond]:
        @st.composite
        def drawn(draw: st.DrawFn) -> EventCond:
            agg = draw(st.sampled_from(sorted(CONDITION_AGGS)))
            prop = None if agg is Agg.COUNT else draw(self.aggregated)
            aggregate = Aggregate(draw(self.specs), agg, prop, draw(windows))
            if draw(st.booleans()):  # counts and sums compared with small integers: these hit
                return EventCond(aggregate, draw(st.sampled_from(COMPARISONS)), draw(st.integers(-1, 4)))
            cond = draw(self.event_value)
            return EventCond(aggregate, cond.op, cond.value)

        return drawn()

    def trees(self, audience_ids: tuple[str, ...] = (), depth: int = 4) -> st.SearchStrategy[Condition]:
        """Trees at most `depth` deep, naming only the given audiences; about half the nodes are And/Or/Not."""

        @st.composite
        def drawn(draw: st.DrawFn, depth: int) -> Condition:
            if depth <= 1 or draw(st.booleans()):
                if audience_ids and draw(st.integers(0, 5)) == 0:
                    return AudienceCond(draw(st.sampled_from(audience_ids)))
                return draw(self.leaves)
            kind = draw(st.sampled_from(("and", "or", "not")))
            if kind == "not":
                return Not(draw(drawn(depth - 1)))
            parts = tuple(draw(drawn(depth - 1)) for _ in range(draw(st.integers(1, 3))))
            return And(parts) if kind == "and" else Or(parts)

        return drawn(depth)


def _piece(draw: st.DrawFn, text: str, op: Op) -> str:
    """A prefix, suffix or middle part of a string, as the operator would find it."""
    cut = draw(st.integers(0, len(text)))
    if op is Op.STARTS_WITH:
        return text[:cut]
    if op is Op.ENDS_WITH:
        return text[cut:]
    return text[cut : draw(st.integers(cut, len(text)))]


@dataclass(frozen=True)
class Case:
    """A population, a tree (which may name `a1`, `a2`, `gone`, `never-defined`), the audiences' definitions
    (`a1` names none, `a2` may name `a1`, `gone` is archived), and more leaf conditions to check."""

    population: Population
    tree: Condition
    definitions: dict[str, Condition | None]
    extra: tuple[Condition, ...]


@st.composite
def cases(draw: st.DrawFn, max_profiles: int = 8, extra: int = 12) -> Case:
    """A case whose conditions compare mostly with the paths and values its population holds."""
    population = draw(populations(max_profiles))
    grammar = Grammar.of(population)
    definitions: dict[str, Condition | None] = {
        "a1": draw(grammar.trees((), 2)),
        "a2": draw(grammar.trees(("a1", "gone"), 2)),
        "gone": None,
    }
    tree = draw(grammar.trees(("a1", "a2", "gone", "never-defined"), 4))
    more = tuple(draw(grammar.leaves) for _ in range(extra))
    return Case(population, tree, definitions, more)


def lookup(definitions: dict[str, Condition | None]) -> Definitions:
    """Definitions as the evaluators take them."""
    return definitions.get
