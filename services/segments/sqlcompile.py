"""The bulk evaluator: a condition tree compiled to SQL (SQLAlchemy Core) over the read model's leaves.

`evaluate.py` answers for one profile in Python; this module answers for the whole population in one query, on
SQLite, PostgreSQL or any engine SQLAlchemy speaks. The two must agree exactly (tests/unit/segments/
test_agreement.py holds them equal on random populations and trees).

Shape: every leaf condition is a correlated `EXISTS (…)` (or `NOT EXISTS`) on the profile's id, so `And`, `Or`
and `Not` compose as plain two-valued boolean SQL (no subquery can yield NULL into the logic), each profile
is decided by index lookups of its own rows (`profile_id` leads every per-profile index), and a caller's paging
(`members(…).where(profile_id > after).order_by(profile_id).limit(n)`) stops once a page is full instead of
computing every subquery over the whole population first. PostgreSQL turns top-level `EXISTS`/`NOT EXISTS` into
semi/anti joins (which may hash and spill); `NOT IN (subquery)` would not be, and degrades to a rescan per row
once the set outgrows `work_mem`.

Values compare as `values.holds` does, column by column:

- negative operators (`!=`, `not_in`, `not_exists`) are the negation of their positive twin, so they hold when
  the value is absent;
- `=` / `in` compare within a kind (numbers as doubles, strings on their first `TEXT_LIMIT` characters, the
  condition's value cut the same way); orderings only number with number, string with string (code point order:
  SQLite's BINARY collation, the columns' COLLATE "C" on PostgreSQL);
- `contains`, `starts_with`, `ends_with` are case-sensitive and take the value literally: `contains` is
  `instr(text, v) > 0` (`strpos` on PostgreSQL: `TextPosition` below), the others compare `substr(…)` with the
  value; LIKE is never used (SQLite's is case-insensitive, and `%`/`_` would be wildcards).

Event aggregates follow `evaluate.compute`: COUNT and UNIQUE_COUNT are 0 without matching events (when `0 op
value` holds, the condition is "no group fails"), the others are absent then (only the negative operators hold).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    FromClause,
    Integer,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import False_, True_
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Join

from services.segments.domain.conditions import (
    POSITIVE_OF,
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
    Scalar,
    TraitCond,
    ValueCond,
    Window,
)
from services.segments.domain.evaluate import Definitions, no_audiences
from services.segments.domain.values import (
    BOOL,
    NULL,
    NUMBER,
    SCALAR_KINDS,
    STRING,
    TEXT_LIMIT,
    Doc,
    holds,
)
from services.segments.tables import (
    computed_leaves,
    event_leaves,
    events,
    profile_consent,
    profiles,
    subjects,
    trait_leaves,
)

Predicate = ColumnElement[bool]


def members(node: Condition, now: int, audiences: Definitions = no_audiences) -> Select[str]:
    """`SELECT profile_id FROM segments_profiles WHERE …`: every profile satisfying the tree at `now` (µs)."""
    return select(profiles.c.profile_id).where(condition(node, now, audiences))


def count_members(node: Condition, now: int, audiences: Definitions = no_audiences) -> Select[int]:
    """`SELECT count(*) FROM segments_profiles WHERE …`: how many profiles satisfy the tree at `now`."""
    return select(func.count()).select_from(profiles).where(condition(node, now, audiences))


def condition(
    node: Condition,
    now: int,
    audiences: Definitions = no_audiences,
    *,
    profile_id: ColumnElement[str] = profiles.c.profile_id,
) -> Predicate:
    """The tree as a boolean SQL expression over `profile_id` (by default `segments_profiles.profile_id`; any
    non-null column of profile ids works, e.g. `segments_memberships.profile_id`). Its subqueries correlate with
    the enclosing query, which must have that column's table in its FROM. Nested audiences are compiled inline
    (a None definition never holds); a cycle among them raises ValueError."""
    return _Compiler(now, audiences, profile_id).node(node)


class TextPosition(FunctionElement[int]):
    """Where `needle` first occurs in `haystack` (1-based, 0: nowhere), case-sensitive and without wildcards:
    `instr(h, n)`, on PostgreSQL `strpos(h, n)`. Both find an empty needle at 1, as Python's `in` does."""

    type = Integer()
    name = "text_position"
    inherit_cache = True


@compiles(TextPosition)
def _position_default(element: TextPosition, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(TextPosition, "postgresql")
def _position_postgresql(element: TextPosition, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


class ByDialect(FunctionElement[bool]):
    """Two equivalent predicates: the first for SQLite (and any other engine), the second for PostgreSQL, whose
    planner wants another shape of the same question."""

    type = Boolean()
    name = "by_dialect"
    inherit_cache = True


@compiles(ByDialect)
def _by_dialect_default(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses.clauses[0], **kw))


@compiles(ByDialect, "postgresql")
def _by_dialect_postgresql(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses.clauses[1], **kw))


@dataclass(frozen=True, slots=True)
class _Leaf:
    """What a value test reads of one leaf: columns of a leaf table, or an aggregate (kind known up front)."""

    kind: ColumnElement[str] | str
    num: ColumnElement[float] | None = None
    text: ColumnElement[str] | None = None
    time: ColumnElement[int] | None = None

    @classmethod
    def of(cls, table: FromClause) -> _Leaf:
        return cls(table.c.kind, table.c.num, table.c.text, table.c.time)


class _Compiler:
    def __init__(self, now: int, audiences: Definitions, profile_id: ColumnElement[str]) -> None:
        self.now = now
        self.audiences = audiences
        self.profile_id = profile_id
        self.inside: list[str] = []

    def node(self, node: Condition) -> Predicate:
        if isinstance(node, And):
            return _all([self.node(part) for part in node.parts])
        if isinstance(node, Or):
            return _any([self.node(part) for part in node.parts])
        if isinstance(node, Not):
            return _not(self.node(node.part))
        if isinstance(node, TraitCond):
            return self.document(node.cond, trait_leaves, lambda t: t.c.profile_id == self.profile_id)
        if isinstance(node, ComputedCond):
            return self.document(
                node.cond,
                computed_leaves,
                lambda t: and_(t.c.profile_id == self.profile_id, t.c.trait_id == node.trait_id),
            )
        if isinstance(node, EventCond):
            return self.event_condition(node)
        if isinstance(node, ConsentCond):
            c = profile_consent.alias()
            return _exists(
                c,
                _all([c.c.profile_id == self.profile_id, c.c.purpose == node.purpose, c.c.granted.is_(True)]),
            )
        if isinstance(node, IdentifierCond):
            s = subjects.alias()
            return _exists(
                s, _all([s.c.profile_id == self.profile_id, s.c.identifier_type == node.identifier_type])
            )
        if isinstance(node, AudienceCond):
            return self.audience(node.audience_id)
        if isinstance(node, Funnel):
            return self.funnel(node)
        raise TypeError(f"not a condition: {node!r}")

    def audience(self, audience_id: str) -> Predicate:
        if audience_id in self.inside:
            raise ValueError(
                f"audiences refer to each other in a cycle: {' > '.join([*self.inside, audience_id])}"
            )
        other = self.audiences(audience_id)
        if other is None:
            return false()
        self.inside.append(audience_id)
        try:
            return self.node(other)
        finally:
            self.inside.pop()

    # Documents: traits, computed values, event properties.

    def document(
        self, cond: ValueCond, table: FromClause, owned: Callable[[FromClause], Predicate]
    ) -> Predicate:
        """`values.holds(cond, doc)` where the document is the rows of `table` that `owned` selects."""
        positive = POSITIVE_OF.get(cond.op)
        if positive is not None:
            return _not(self.document(ValueCond(cond.path, positive, cond.value, cond.band), table, owned))
        t = table.alias()
        value = t.c.item.is_(False)
        if cond.op is Op.CONTAINS:
            test = _any(
                [
                    _all([value, self.test(Op.CONTAINS, cond.value, None, _Leaf.of(t))]),
                    _all([t.c.item.is_(True), _equals(_Leaf.of(t), cond.value)]),
                ]
            )
        else:
            test = _all([value, self.test(cond.op, cond.value, cond.band, _Leaf.of(t))])
        return _exists(t, _all([owned(t), t.c.path == cond.path, test]))

    def test(self, op: Op, value: Any, band: Band | None, leaf: _Leaf) -> Predicate:
        """A positive operator on one leaf's value (`contains` on its text only: list items are the caller's)."""
        if op is Op.EXISTS:
            return _kind_is_not(leaf, NULL)
        if op is Op.EQ:
            return _equals(leaf, value)
        if op is Op.IN:
            return _in(leaf, value if isinstance(value, tuple) else (value,))
        if op is Op.CONTAINS:
            if not isinstance(value, str) or leaf.text is None:
                return false()
            return _all([_kind_is(leaf, STRING), TextPosition(leaf.text, literal(value)) > 0])
        if op is Op.STARTS_WITH:
            if not isinstance(value, str) or leaf.text is None:
                return false()
            if not value:
                return _kind_is(leaf, STRING)
            # `text >= value` adds nothing to the truth (a string starting with `value` sorts after it) but
            # lets an index on the text narrow the range scanned.
            return _all(
                [
                    _kind_is(leaf, STRING),
                    leaf.text >= value,
                    func.substr(leaf.text, 1, len(value)) == value,
                ]
            )
        if op is Op.ENDS_WITH:
            if not isinstance(value, str) or leaf.text is None:
                return false()
            if not value:
                return _kind_is(leaf, STRING)
            length = func.length(leaf.text)
            return _all(
                [
                    _kind_is(leaf, STRING),
                    length >= len(value),
                    func.substr(leaf.text, length - (len(value) - 1)) == value,
                ]
            )
        if op is Op.WITHIN_LAST:
            if (
                leaf.time is None
                or not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                return false()
            return leaf.time >= self.now - int(value * 1_000_000)
        if op is Op.IN_BAND:
            if band is None or leaf.num is None:
                return false()
            bounds: list[Predicate] = [_kind_is(leaf, NUMBER)]
            if band.lower is not None:
                bounds.append(leaf.num >= float(band.lower) if not math.isnan(band.lower) else false())
            if band.upper is not None:
                bounds.append(leaf.num < float(band.upper) if not math.isnan(band.upper) else false())
            return _all(bounds)
        if op in (Op.LT, Op.LE, Op.GT, Op.GE):
            return _ordered(leaf, op, value)
        raise ValueError(f"{op} is not a positive operator")

    # Events.

    def matching(self, spec: EventSpec, e: FromClause) -> Predicate:
        """`evaluate.matches`: the event row `e` is of the spec's type and name, its properties satisfy `where`."""
        parts: list[Predicate] = [e.c.message_type == spec.message_type]
        if spec.name is not None:
            parts.append(e.c.name == spec.name)
        parts.extend(
            self.document(cond, event_leaves, lambda t: t.c.position == e.c.position) for cond in spec.where
        )
        return _all(parts)

    def window(self, window: Window, e: FromClause) -> Predicate:
        """`evaluate.in_window` on the event row `e`."""
        parts: list[Predicate] = []
        if window.within is not None:
            parts.append(e.c.time >= self.now - window.within)
        if window.start is not None:
            parts.append(e.c.time >= window.start)
        if window.end is not None:
            parts.append(e.c.time < window.end)
        return _all(parts)

    def chosen(self, aggregate: Aggregate, e: FromClause) -> Predicate:
        """The profile's events the aggregate combines (never an unattributed one: `profile_id` is compared)."""
        return _all(
            [
                e.c.profile_id == self.profile_id,
                self.window(aggregate.window, e),
                self.matching(aggregate.events, e),
            ]
        )

    def chosen_by_all(self, aggregate: Aggregate, e: FromClause) -> Predicate:
        """Every profile's events the aggregate combines: `chosen` without the correlation, for a derived
        table computed once for all profiles."""
        return _all(
            [
                e.c.profile_id.is_not(None),
                self.window(aggregate.window, e),
                self.matching(aggregate.events, e),
            ]
        )

    def event_condition(self, node: EventCond) -> Predicate:
        positive = POSITIVE_OF.get(node.op)
        if positive is not None:
            return _not(self.event_condition(EventCond(node.aggregate, positive, node.value)))
        aggregate, agg = node.aggregate, node.aggregate.agg
        if agg in (Agg.FIRST, Agg.LAST):
            return self.first_or_last(node)
        e = events.alias()
        if agg is Agg.COUNT:
            return self.grouped(node, e, func.count(), zero=True)
        if aggregate.property is None:
            # No property: no values. UNIQUE_COUNT is 0, the others are absent.
            return _constant(agg is Agg.UNIQUE_COUNT and _zero_holds(node, self.now))
        leaf = event_leaves.alias()
        kinds = SCALAR_KINDS if agg is Agg.UNIQUE_COUNT else frozenset({NUMBER})
        joined = e.join(
            leaf,
            and_(
                leaf.c.position == e.c.position,
                leaf.c.path == aggregate.property,
                leaf.c.item.is_(False),
                leaf.c.kind.in_(sorted(kinds)),
            ),
        )
        if agg is Agg.UNIQUE_COUNT:
            return self.grouped(node, joined, func.count(leaf.c.key.distinct()), zero=True, e=e)
        numbers: dict[Agg, ColumnElement[Any]] = {
            Agg.SUM: func.sum(leaf.c.num),
            Agg.MIN: func.min(leaf.c.num),
            Agg.MAX: func.max(leaf.c.num),
            Agg.AVERAGE: func.avg(leaf.c.num),
        }
        if agg not in numbers:
            raise ValueError(f"{agg} cannot be compared in a condition (only through a computed trait)")
        return self.grouped(node, joined, numbers[agg], zero=False, e=e)

    def grouped(
        self,
        node: EventCond,
        source: FromClause,
        value: ColumnElement[Any],
        *,
        zero: bool,
        e: FromClause | None = None,
    ) -> Predicate:
        """An aggregate over the profile's chosen events, as a number compared with the condition's value.
        `zero`: the aggregate is 0 (not absent) without rows."""
        e = source if e is None else e
        test = self.test(node.op, node.value, None, _Leaf(NUMBER, num=value))
        if zero and _zero_holds(node, self.now):
            # 0 satisfies the comparison: every profile does but those with a group that fails it.
            failing = _not(test)
            if isinstance(failing, False_):
                return true()
            return _not(self.in_groups(node.aggregate, source, e, failing))
        if isinstance(test, False_):
            return false()
        return self.in_groups(node.aggregate, source, e, test)

    def in_groups(
        self, aggregate: Aggregate, source: FromClause, e: FromClause, having: Predicate
    ) -> Predicate:
        """The profile is among those whose chosen events' group satisfies `having`, in two equivalent shapes:
        SQLite runs a correlated subquery on the profile's index, fast; PostgreSQL would run that once per
        profile (a plan node per row), so it looks the profile up in one uncorrelated derived table of every
        profile's groups instead, which it turns into a hash semi- (anti-, under `not`) join."""
        if isinstance(having, False_):
            return false()
        correlated = _exists(source, self.chosen(aggregate, e), group_by=e.c.profile_id, having=having)
        where = self.chosen_by_all(aggregate, e)
        if isinstance(where, False_):
            return false()
        groups = select(e.c.profile_id.label("profile_id")).select_from(source)
        if not isinstance(where, True_):
            groups = groups.where(where)
        groups = groups.group_by(e.c.profile_id)
        if not isinstance(having, True_):
            groups = groups.having(having)
        g = groups.subquery()
        derived = exists(
            select(literal(1)).select_from(g).where(g.c.profile_id == self.profile_id).correlate_except(g)
        )
        return ByDialect(correlated, derived)

    def first_or_last(self, node: EventCond) -> Predicate:
        """FIRST/LAST: the value at the property of the first/last chosen event (by time, then position) that has
        a scalar there; absent when none has."""
        aggregate = node.aggregate
        if aggregate.property is None:
            return false()
        e, inner = events.alias(), event_leaves.alias()
        order = (
            (e.c.time, e.c.position) if aggregate.agg is Agg.FIRST else (e.c.time.desc(), e.c.position.desc())
        )
        with_scalar = e.join(
            inner,
            and_(
                inner.c.position == e.c.position,
                inner.c.path == aggregate.property,
                inner.c.item.is_(False),
                inner.c.kind.in_(sorted(SCALAR_KINDS)),
            ),
        )
        # Two equivalent shapes: SQLite seeks each profile's index once, fast; PostgreSQL runs a correlated
        # subquery per profile slowly (6.2 s over 1M) and ranks every profile's events in one pass faster.
        return ByDialect(
            self.first_or_last_correlated(node, e, with_scalar, order),
            self.first_or_last_ranked(node, e, inner, with_scalar, order),
        )

    def first_or_last_ranked(
        self, node: EventCond, e: FromClause, inner: FromClause, with_scalar: FromClause, order: Any
    ) -> Predicate:
        """Every profile's first (last) chosen event with a scalar at the property, ranked once by ROW_NUMBER in
        one uncorrelated derived table that the profile is looked up in (as `in_groups`): PostgreSQL's way."""
        where = self.chosen_by_all(node.aggregate, e)
        if isinstance(where, False_):
            return false()
        ranked = select(
            e.c.profile_id.label("profile_id"),
            inner.c.kind.label("kind"),
            inner.c.num.label("num"),
            inner.c.text.label("text"),
            inner.c.time.label("time"),
            func.row_number().over(partition_by=e.c.profile_id, order_by=order).label("rank"),
        ).select_from(with_scalar)
        if not isinstance(where, True_):
            ranked = ranked.where(where)
        r = ranked.subquery()
        test = self.test(node.op, node.value, None, _Leaf.of(r))  # the ranked row carries its leaf's value
        if isinstance(test, False_):
            return false()
        query = select(literal(1)).select_from(r).where(r.c.profile_id == self.profile_id, r.c.rank == 1)
        if not isinstance(test, True_):
            query = query.where(test)
        return exists(query.correlate_except(r))

    def first_or_last_correlated(
        self, node: EventCond, e: FromClause, with_scalar: FromClause, order: Any
    ) -> Predicate:
        """Per profile, its first (last) event by an ordered LIMIT 1 on the profile's index: SQLite's way."""
        aggregate = node.aggregate
        position = (
            select(e.c.position)
            .select_from(with_scalar)
            .where(self.chosen(aggregate, e))
            .order_by(*order)
            .limit(1)
            .correlate_except(*_tables(with_scalar))
            .scalar_subquery()
        )
        leaf = event_leaves.alias()
        test = self.test(node.op, node.value, None, _Leaf.of(leaf))
        return _exists(
            leaf,
            _all(
                [
                    leaf.c.position == position,
                    leaf.c.path == aggregate.property,
                    leaf.c.item.is_(False),
                    test,
                ]
            ),
        )

    def funnel(self, node: Funnel) -> Predicate:
        """`evaluate.funnel_holds`: a chain of the profile's events, one per step, each strictly after the one
        before in (time, position) order, all within `within` of the first. (Python's greedy choice of the
        earliest next event finds a chain whenever one exists: times never decrease along the order.)"""
        if not node.steps:
            return false()
        chain = [events.alias() for _ in node.steps]
        first = chain[0]

        def step(k: int) -> Predicate:
            e, before = chain[k], chain[k - 1]
            parts = [
                e.c.profile_id == before.c.profile_id,
                or_(
                    e.c.time > before.c.time,
                    and_(e.c.time == before.c.time, e.c.position > before.c.position),
                ),
                self.matching(node.steps[k], e),
            ]
            if node.within is not None:
                parts.append(e.c.time <= first.c.time + node.within)
            if k + 1 < len(chain):
                parts.append(step(k + 1))
            return _exists(e, _all(parts))

        parts = [first.c.profile_id == self.profile_id, self.matching(node.steps[0], first)]
        if len(chain) > 1:
            parts.append(step(1))
        return _exists(first, _all(parts))


def _zero_holds(node: EventCond, now: int) -> bool:
    """Whether an aggregate of 0 (COUNT, UNIQUE_COUNT without values) satisfies the condition."""
    return holds(ValueCond("", node.op, node.value), Doc.of(0), now)


# Value tests.


def _kind_is(leaf: _Leaf, kind: str) -> Predicate:
    if isinstance(leaf.kind, str):
        return _constant(leaf.kind == kind)
    return leaf.kind == kind


def _kind_is_not(leaf: _Leaf, kind: str) -> Predicate:
    if isinstance(leaf.kind, str):
        return _constant(leaf.kind != kind)
    return leaf.kind != kind


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _equals(leaf: _Leaf, value: Any) -> Predicate:
    """`values.equals`: same kind, same value."""
    if value is None:
        return _kind_is(leaf, NULL)
    if isinstance(value, bool):
        if leaf.num is None:
            return false()
        return _all([_kind_is(leaf, BOOL), leaf.num == (1.0 if value else 0.0)])
    if isinstance(value, int | float):
        if leaf.num is None or not _finite_number(value):
            return false()
        return _all([_kind_is(leaf, NUMBER), leaf.num == float(value)])
    if isinstance(value, str):
        if leaf.text is None:
            return false()
        return _all([_kind_is(leaf, STRING), leaf.text == value[:TEXT_LIMIT]])
    return false()


def _in(leaf: _Leaf, values: tuple[Scalar, ...]) -> Predicate:
    """Any of the values: numbers and strings each as one `IN (…)` list."""
    numbers = sorted({float(v) for v in values if isinstance(v, int | float) and _finite_number(v)})
    strings = sorted({v[:TEXT_LIMIT] for v in values if isinstance(v, str)})
    parts: list[Predicate] = []
    if numbers and leaf.num is not None:
        parts.append(_all([_kind_is(leaf, NUMBER), leaf.num.in_(numbers)]))
    if strings and leaf.text is not None:
        parts.append(_all([_kind_is(leaf, STRING), leaf.text.in_(strings)]))
    parts.extend(_equals(leaf, v) for v in {v for v in values if v is None or isinstance(v, bool)})
    return _any(parts)


def _ordered(leaf: _Leaf, op: Op, value: Any) -> Predicate:
    """`values.ordered`: numbers with numbers, strings with strings."""
    left: ColumnElement[Any] | None
    right: float | str
    if isinstance(value, bool) or value is None:
        return false()
    if isinstance(value, int | float):
        if math.isnan(value):
            return false()
        left, kind, right = leaf.num, NUMBER, float(value)
    elif isinstance(value, str):
        left, kind, right = leaf.text, STRING, value[:TEXT_LIMIT]
    else:
        return false()
    if left is None:
        return false()
    compared = {Op.LT: left < right, Op.LE: left <= right, Op.GT: left > right, Op.GE: left >= right}[op]
    return _all([_kind_is(leaf, kind), compared])


# Boolean SQL with constants folded (a test that cannot hold leaves no subquery behind).


def _constant(value: bool) -> Predicate:
    return true() if value else false()


def _all(parts: list[Predicate]) -> Predicate:
    kept = [part for part in parts if not isinstance(part, True_)]
    if any(isinstance(part, False_) for part in kept):
        return false()
    if not kept:
        return true()
    return kept[0] if len(kept) == 1 else and_(*kept)


def _any(parts: list[Predicate]) -> Predicate:
    kept = [part for part in parts if not isinstance(part, False_)]
    if any(isinstance(part, True_) for part in kept):
        return true()
    if not kept:
        return false()
    return kept[0] if len(kept) == 1 else or_(*kept)


def _not(part: Predicate) -> Predicate:
    if isinstance(part, True_):
        return false()
    if isinstance(part, False_):
        return true()
    return not_(part)


def _exists(
    source: FromClause,
    where: Predicate,
    *,
    group_by: ColumnElement[Any] | None = None,
    having: Predicate | None = None,
) -> Predicate:
    if isinstance(where, False_) or isinstance(having, False_):
        return false()
    # Correlate explicitly: every table but the subquery's own comes from an enclosing query, however deep
    # (automatic correlation only looks one level up).
    query = select(literal(1)).select_from(source).correlate_except(*_tables(source))
    if not isinstance(where, True_):
        query = query.where(where)
    if group_by is not None:
        query = query.group_by(group_by)
    if having is not None and not isinstance(having, True_):
        query = query.having(having)
    return exists(query)


def _tables(source: FromClause) -> list[FromClause]:
    if isinstance(source, Join):
        return [source, *_tables(source.left), *_tables(source.right)]
    return [source]
