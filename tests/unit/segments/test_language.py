"""The audience language: every construct, errors in plain words with their place, and render ↔ parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.segments.domain import checks
from services.segments.domain.conditions import (
    CONDITION_AGGS,
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
    depth,
)
from services.segments.domain.errors import LanguageError
from services.segments.domain.language import parse_aggregate, parse_condition, render, render_aggregate

DAY = 86_400_000_000
JAN_1 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
FEB_1 = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp()) * 1_000_000


def trait(path: str, op: Op, value: Scalar | tuple[Scalar, ...] = None) -> TraitCond:
    return TraitCond(ValueCond(path, op, value))


def did(name: str, *where: ValueCond) -> EventCond:
    return EventCond(Aggregate(EventSpec("track", name, where)), Op.GE, 1)


# --- Every construct ----------------------------------------------------------------------------------------


def test_the_example_of_the_brief() -> None:
    text = (
        'traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 '
        'and trait("lifetime_value") > 100 and not audience("churned")'
    )
    orders = Aggregate(EventSpec("track", "Order Completed"), Agg.COUNT, None, Window(within=30 * DAY))
    assert parse_condition(text) == And(
        (
            trait("plan", Op.EQ, "pro"),
            EventCond(orders, Op.GE, 2),
            ComputedCond("lifetime_value", ValueCond("", Op.GT, 100)),
            Not(AudienceCond("churned")),
        )
    )
    assert render(parse_condition(text)) == text


@pytest.mark.parametrize(
    ("text", "op", "value"),
    [
        ('traits.plan = "pro"', Op.EQ, "pro"),
        ("traits.plan != null", Op.NE, None),
        ("traits.plan < 1.5", Op.LT, 1.5),
        ("traits.plan <= -3", Op.LE, -3),
        ('traits.plan > "m"', Op.GT, "m"),
        ("traits.plan >= 1e+20", Op.GE, 1e20),
        ('traits.plan in [1, "a", true, null]', Op.IN, (1, "a", True, None)),
        ("traits.plan not in []", Op.NOT_IN, ()),
        ('traits.plan contains "vip"', Op.CONTAINS, "vip"),
        ('traits.plan starts_with "pr"', Op.STARTS_WITH, "pr"),
        ('traits.plan ends_with "o"', Op.ENDS_WITH, "o"),
        ("traits.plan exists", Op.EXISTS, None),
        ("traits.plan not exists", Op.NOT_EXISTS, None),
        ("traits.plan within last 7d", Op.WITHIN_LAST, 7 * 86_400),
        ('traits.plan in band "25-34"', Op.IN_BAND, "25-34"),
    ],
)
def test_every_operator_on_a_trait(text: str, op: Op, value: Scalar | tuple[Scalar, ...]) -> None:
    assert parse_condition(text) == trait("plan", op, value)
    assert render(trait("plan", op, value)) == text


def test_values_keep_their_json_types() -> None:
    assert parse_condition("traits.a = 2.0") == trait("a", Op.EQ, 2.0)
    assert type(parse_condition("traits.a = 2").cond.value) is int  # type: ignore[union-attr]
    assert parse_condition(r'traits.a = "tab\t \"q\" \u00e9"') == trait("a", Op.EQ, 'tab\t "q" é')
    assert parse_condition("traits.a = false") == trait("a", Op.EQ, False)


def test_paths_with_odd_keys_nested_keys_and_keywords() -> None:
    assert parse_condition('traits["odd key"].x exists') == trait("odd key.x", Op.EXISTS)
    assert parse_condition("traits.address.country exists") == trait("address.country", Op.EXISTS)
    assert parse_condition("traits.last.and exists") == trait("last.and", Op.EXISTS)
    assert render(trait("odd key.x", Op.EXISTS)) == 'traits["odd key"].x exists'


def test_durations() -> None:
    units = {
        "2w": 14 * DAY,
        "30d": 30 * DAY,
        "12h": 12 * 3_600_000_000,
        "15m": 900_000_000,
        "45s": 45_000_000,
    }
    units |= {"250ms": 250_000, "7us": 7}
    for text, micros in units.items():
        node = parse_condition(f'event("X").count(within {text}) > 0')
        assert isinstance(node, EventCond) and node.aggregate.window == Window(within=micros)
    assert render(parse_condition('event("X").count(within 2w) > 0')) == 'event("X").count(within 14d) > 0'


def test_boolean_precedence_and_parentheses() -> None:
    a, b, c = (trait(name, Op.EXISTS) for name in "abc")
    assert parse_condition("traits.a exists or traits.b exists and traits.c exists") == Or((a, And((b, c))))
    assert parse_condition("(traits.a exists or traits.b exists) and traits.c exists") == And((Or((a, b)), c))
    assert parse_condition("not traits.a exists and traits.b exists") == And((Not(a), b))
    assert parse_condition("not (traits.a exists and traits.b exists)") == Not(And((a, b)))
    assert parse_condition("(traits.a exists and traits.b exists) and traits.c exists") == And(
        (And((a, b)), c)
    )
    assert parse_condition("((traits.a exists))") == a
    assert render(And((And((a, b)), c))) == "(traits.a exists and traits.b exists) and traits.c exists"
    assert render(Or((And((a, b)), c))) == "traits.a exists and traits.b exists or traits.c exists"


def test_keywords_are_case_insensitive_and_rendered_lower_case() -> None:
    node = parse_condition('NOT Traits.a EXISTS And EVENT("X") Or traits.b Not In [TRUE]')
    assert render(node) == 'not traits.a exists and event("X") or traits.b not in [true]'


def test_comments_and_newlines() -> None:
    text = """
        # people on the pro plan
        traits.plan = "pro"   # not "team"
        and event("Order Completed")
    """
    assert parse_condition(text) == And((trait("plan", Op.EQ, "pro"), did("Order Completed")))


def test_event_kinds_and_where_clauses() -> None:
    assert parse_condition('event("Order Completed")') == did("Order Completed")
    assert parse_condition('page("Pricing")') == EventCond(Aggregate(EventSpec("page", "Pricing")), Op.GE, 1)
    assert parse_condition("page()") == EventCond(Aggregate(EventSpec("page")), Op.GE, 1)
    assert parse_condition('screen("Home")') == EventCond(Aggregate(EventSpec("screen", "Home")), Op.GE, 1)
    assert parse_condition("identify()") == EventCond(Aggregate(EventSpec("identify")), Op.GE, 1)
    assert parse_condition("group()") == EventCond(Aggregate(EventSpec("group")), Op.GE, 1)
    where = (ValueCond("revenue", Op.GT, 10), ValueCond("currency", Op.EQ, "EUR"))
    text = 'event("Order Completed", where revenue > 10 and currency = "EUR")'
    assert parse_condition(text) == did("Order Completed", *where)
    assert render(did("Order Completed", *where)) == text
    spec = EventSpec("page", None, (ValueCond("path.x y", Op.STARTS_WITH, "/docs"),))
    assert parse_condition('page(where path["x y"] starts_with "/docs")') == EventCond(
        Aggregate(spec), Op.GE, 1
    )


def test_aggregations_and_windows() -> None:
    cases = {
        'event("X").count() = 0': (Agg.COUNT, None, Window(), Op.EQ, 0),
        'event("X").count(within 30d)': (Agg.COUNT, None, Window(within=30 * DAY), Op.GE, 1),
        'event("X").sum("revenue", within 30d) > 100': (
            Agg.SUM,
            "revenue",
            Window(within=30 * DAY),
            Op.GT,
            100,
        ),
        'event("X").min("price") < 5': (Agg.MIN, "price", Window(), Op.LT, 5),
        'event("X").max("price") exists': (Agg.MAX, "price", Window(), Op.EXISTS, None),
        'event("X").average("price") >= 2.5': (Agg.AVERAGE, "price", Window(), Op.GE, 2.5),
        'event("X").first("country") = "FR"': (Agg.FIRST, "country", Window(), Op.EQ, "FR"),
        'event("X").last("plan") in ["a", "b"]': (Agg.LAST, "plan", Window(), Op.IN, ("a", "b")),
        'event("X").unique_count("sku") > 3': (Agg.UNIQUE_COUNT, "sku", Window(), Op.GT, 3),
        'event("X").count(between 2026-01-01 and 2026-02-01) > 1': (
            Agg.COUNT,
            None,
            Window(start=JAN_1, end=FEB_1),
            Op.GT,
            1,
        ),
        'event("X").count(since 2026-01-01) > 1': (Agg.COUNT, None, Window(start=JAN_1), Op.GT, 1),
        'event("X").count(before 2026-01-01T02:00:00+02:00) > 1': (
            Agg.COUNT,
            None,
            Window(end=JAN_1),
            Op.GT,
            1,
        ),
    }
    for text, (agg, prop, window, op, value) in cases.items():
        expected = EventCond(Aggregate(EventSpec("track", "X"), agg, prop, window), op, value)
        assert parse_condition(text) == expected, text


def test_timestamps_render_as_dates_at_midnight_utc_and_in_utc_otherwise() -> None:
    node = parse_condition('event("X").count(between 2026-01-01T10:00:00.5+02:00 and 2026-02-01) > 1')
    assert render(node) == 'event("X").count(between 2026-01-01T08:00:00.500000Z and 2026-02-01) > 1'


def test_computed_traits_consent_audiences_identifiers() -> None:
    assert parse_condition('trait("ltv") > 100') == ComputedCond("ltv", ValueCond("", Op.GT, 100))
    assert parse_condition('trait("address").country = "FR"') == ComputedCond(
        "address", ValueCond("country", Op.EQ, "FR")
    )
    assert parse_condition('consent("marketing")') == ConsentCond("marketing")
    assert parse_condition('audience("churned")') == AudienceCond("churned")
    assert parse_condition('has_identifier("email")') == IdentifierCond("email")
    assert parse_condition('has_identifier("external:crm_id")') == IdentifierCond("external:crm_id")


def test_funnels() -> None:
    viewed, bought = EventSpec("track", "Viewed Product"), EventSpec("track", "Order Completed")
    text = 'event("Viewed Product") then event("Order Completed") within 7d'
    assert parse_condition(text) == Funnel((viewed, bought), 7 * DAY)
    assert render(Funnel((viewed, bought), 7 * DAY)) == text
    three = parse_condition('page("Pricing") then event("Viewed Product") then event("Order Completed")')
    assert three == Funnel((EventSpec("page", "Pricing"), viewed, bought))
    assert parse_condition('not event("A") then event("B")') == Not(
        Funnel((EventSpec("track", "A"), EventSpec("track", "B")))
    )


def test_computed_trait_expressions() -> None:
    aggregate = parse_aggregate('event("Order Completed").sum("revenue", within 30d)')
    assert aggregate == Aggregate(
        EventSpec("track", "Order Completed"), Agg.SUM, "revenue", Window(within=30 * DAY)
    )
    assert parse_aggregate('page().most_frequent("path")') == Aggregate(
        EventSpec("page"), Agg.MOST_FREQUENT, "path"
    )
    assert parse_aggregate('event("X")') == Aggregate(EventSpec("track", "X"))
    listed = Aggregate(EventSpec("track", "X"), Agg.UNIQUE_LIST, "sku")
    assert render_aggregate(listed) == 'event("X").unique_list("sku")'
    assert parse_aggregate(render_aggregate(listed)) == listed


# --- Errors -------------------------------------------------------------------------------------------------


def error_of(text: str, aggregate: bool = False) -> LanguageError:
    with pytest.raises(LanguageError) as raised:
        parse_aggregate(text) if aggregate else parse_condition(text)
    return raised.value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'traits.plan = "pro" and traits.age = and traits.x exists',
            'line 1, column 38: expected a value (a string, number, true/false, null or a list) after "=", '
            'found "and"',
        ),
        (
            'traits.plan "pro"',
            "line 1, column 13: expected an operator (=, !=, <, <=, >, >=, in, not in, contains, starts_with, "
            'ends_with, exists, not exists, within last or in band) after "traits.plan", found the string "pro"',
        ),
        (
            'traits.plan == "pro"',
            'line 1, column 14: expected a value (a string, number, true/false, null or a list) after "=", '
            'found "=" (compare with a single "=")',
        ),
        (
            'traits.plan = "pro',
            'line 1, column 15: expected a value (a string, number, true/false, null or a list) after "=", '
            'found a string that is not closed (a string ends with " on the same line)',
        ),
        (
            'evnt("X")',
            'line 1, column 1: expected a condition (traits.…, event("…"), page(…), screen(…), identify(), '
            'group(), trait("…"), consent("…"), audience("…"), has_identifier("…"), not or "("), found "evnt"',
        ),
        (
            'event("X", where a = 1 or b = 2)',
            'line 1, column 24: expected "and" or ")" after "1", found "or" (a where clause joins its conditions '
            "with and only: join alternatives outside event(…))",
        ),
        (
            'traits.a = 1 event("Y")',
            'line 1, column 14: expected "and", "or" or the end of the text after "1", found "event" '
            '(join conditions with "and" or "or")',
        ),
    ],
)
def test_syntax_errors_say_what_was_found_and_expected(text: str, message: str) -> None:
    assert str(error_of(text)) == message


def test_a_multi_line_definition_reports_the_right_line() -> None:
    text = 'traits.plan = "pro"\n  and (event("Order Completed").count(within 30d) >= 2\n       or traits.vip = true\n'
    error = error_of(text)
    assert (error.line, error.column) == (3, 28)
    assert str(error) == 'line 3, column 28: expected ")" after "true", found the end of the text'
    error = error_of('traits.plan = "pro"\n# a comment\n  and event("X").count(within 30days) > 1')
    assert (error.line, error.column) == (3, 31)
    assert "expected a duration (such as 30d, 12h, 15m or 45s)" in str(error)


def test_errors_carry_the_expected_phrases_and_the_field() -> None:
    error = error_of("traits.plan = ")
    assert error.expected == ("a value (a string, number, true/false, null or a list)",)
    assert error.field == "expression"
    assert str(error_of("  # nothing\n")).startswith("line 1, column 1: the expression is empty")


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("traits.flag > true", (1, 15), "> compares numbers or strings, not true"),
        ('traits.tags = ["a"]', (1, 15), "a list is only for in and not in"),
        ('traits.tags in "a"', (1, 16), 'in needs a list of values, e.g. in ["a", "b"]'),
        ("traits.a = 1e999", (1, 12), "too large a number"),
        ('traits.a = "\\q"', (1, 12), "invalid escape"),
        ("traits.a within last 1500ms", (1, 22), "whole seconds"),
        ('event("X").count(within 30d) >= "2"', (1, 33), "count() is compared with a whole number"),
        ('event("X").count() >= 2.5', (1, 23), "count() is compared with a whole number"),
        ('event("X").count() in [1]', (1, 20), "count() is compared with a whole number"),
        ('event("X").sum("v") contains 1', (1, 21), "sum() is a number: contains does not apply"),
        ('event("X").sum("v") = "a"', (1, 23), "sum() is a number: compare it with a number"),
        ('event("X").count(within -3d) >= 2', (1, 25), "a duration cannot be negative"),
        ('event("X").count(within 0d) >= 2', (1, 25), "must be longer than zero"),
        ('event("X").most_frequent("plan") = "a"', (1, 12), "most_frequent() is only for computed traits"),
        ('event("X").unique_list("plan") contains "a"', (1, 12), "unique_list() is only for computed traits"),
        ('event("X").summ("a") > 1', (1, 12), 'unknown aggregation "summ"'),
        ('event("X").sum() > 1', (1, 12), 'sum() needs the property it reads, e.g. sum("revenue")'),
        ('event("X").count("a") > 1', (1, 12), "count() takes no property"),
        ('event("X").sum("a")', (1, 12), "compare sum(…) with a value"),
        ('event("X") within 7d', (1, 12), "a funnel needs two steps or more joined by then"),
        ("event()", (1, 1), "event(…) needs the event's name"),
        ('page("")', (1, 1), "the name is empty: write page() without one to match any"),
        ('identify("x")', (1, 1), "identify messages have no name"),
        ('has_identifier("mail")', (1, 16), 'unknown identifier type "mail"'),
        ('has_identifier("external:CRM")', (1, 16), "unknown identifier type"),
        ('trait("x") in band "a"', (1, 12), "in band is for traits and event properties"),
        ('event("X").max("age") in band "a"', (1, 23), "in band is for traits and event properties"),
        ('event("X").count(between 2026-02-01 and 2026-01-01) > 1', (1, 41), "start before its end"),
        ('event("X").count(since 2026-02-01T10:00) > 1', (1, 24), "needs its offset"),
        ('event("X").count(since 2026-02-30) > 1', (1, 24), "is not a date"),
        ("traits.signup >= 2026-01-01", (1, 18), 'write it as a string: "2026-01-01"'),
        ('audience("")', (1, 10), "audience(…) needs an audience id"),
        ('traits[""] exists', (1, 1), "the trait's path is empty"),
    ],
)
def test_semantic_errors_point_at_the_mistake(text: str, where: tuple[int, int], words: str) -> None:
    error = error_of(text)
    assert (error.line, error.column) == where, str(error)
    assert words in str(error)


def test_depth_beyond_the_limit_is_refused_where_it_happens() -> None:
    error = error_of("not " * (MAX_DEPTH + 1) + "traits.a exists")
    assert (error.line, error.column) == (1, 5)  # the second not makes the eleventh level
    assert f"more than {MAX_DEPTH} levels deep" in str(error)
    assert depth(parse_condition("not " * (MAX_DEPTH - 1) + "traits.a exists")) == MAX_DEPTH


def test_aggregate_expressions_have_their_own_errors() -> None:
    assert str(error_of('event("X").sum("a") > 1', aggregate=True)).startswith(
        'line 1, column 21: expected the end of the text after ")", found ">"'
    )
    assert "a name" in str(error_of('event("X").', aggregate=True))


# --- Round trip ---------------------------------------------------------------------------------------------

TEXT = st.text(max_size=8)
NAMES = st.text(min_size=1, max_size=8)
# Within ±2^53: the contract carries values as google.protobuf.Value (a double), exact only that far.
INTS = st.integers(-(2**53), 2**53)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS: st.SearchStrategy[Scalar] = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
MICROS = st.integers(1, 10**15)
MOMENTS = st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999)
"""0001-01-01 to 9999-12-31, in µs since the epoch."""


def op_values(*, bands: bool = True) -> st.SearchStrategy[tuple[Op, Scalar | tuple[Scalar, ...]]]:
    """An operator and a value it accepts."""
    choices = [
        st.tuples(st.sampled_from([Op.EQ, Op.NE, Op.CONTAINS]), SCALARS),
        st.tuples(st.sampled_from([Op.LT, Op.LE, Op.GT, Op.GE]), st.one_of(INTS, FLOATS, TEXT)),
        st.tuples(st.sampled_from([Op.STARTS_WITH, Op.ENDS_WITH]), TEXT),
        st.tuples(st.sampled_from([Op.IN, Op.NOT_IN]), st.lists(SCALARS, max_size=3).map(tuple)),
        st.tuples(st.sampled_from([Op.EXISTS, Op.NOT_EXISTS]), st.none()),
        st.tuples(st.just(Op.WITHIN_LAST), st.integers(1, 10**9)),
    ]
    if bands:
        choices.append(st.tuples(st.just(Op.IN_BAND), NAMES))
    return st.one_of(choices)


def value_conds(paths: st.SearchStrategy[str] = NAMES) -> st.SearchStrategy[ValueCond]:
    return st.builds(lambda path, ov: ValueCond(path, *ov), paths, op_values())


@st.composite
def specs(draw: st.DrawFn) -> EventSpec:
    kind = draw(st.sampled_from(checks.MESSAGE_TYPES))
    name = draw(NAMES) if kind == "track" else draw(st.none() | NAMES) if kind in checks.NAMED_TYPES else None
    return EventSpec(kind, name, tuple(draw(st.lists(value_conds(), max_size=2))))


WINDOWS = st.one_of(
    st.just(Window()),
    st.builds(lambda us: Window(within=us), MICROS),
    st.builds(lambda at: Window(start=at), MOMENTS),
    st.builds(lambda at: Window(end=at), MOMENTS),
    st.builds(lambda a, b: Window(start=min(a, b), end=max(a, b)), MOMENTS, MOMENTS).filter(
        lambda w: w.start != w.end
    ),
)


@st.composite
def aggregates(draw: st.DrawFn, *, inline: bool = False) -> Aggregate:
    agg = draw(st.sampled_from(sorted(CONDITION_AGGS if inline else Agg)))
    prop = None if agg is Agg.COUNT else draw(NAMES)
    return Aggregate(draw(specs()), agg, prop, draw(WINDOWS))


@st.composite
def event_conds(draw: st.DrawFn) -> EventCond:
    aggregate = draw(aggregates(inline=True))
    if aggregate.agg is Agg.COUNT:
        return EventCond(aggregate, draw(st.sampled_from(sorted(checks.COUNT_OPS))), draw(INTS))
    op, value = draw(
        op_values(bands=False).filter(lambda ov: checks.comparison_problem(aggregate.agg, *ov) is None)
    )
    return EventCond(aggregate, op, value)


IDENTIFIER_TYPES = st.one_of(
    st.sampled_from(checks.IDENTIFIER_TYPES), st.from_regex(r"external:[a-z0-9_]{1,8}", fullmatch=True)
)
LEAVES: st.SearchStrategy[Condition] = st.one_of(
    st.builds(TraitCond, value_conds()),
    st.builds(lambda i, p, ov: ComputedCond(i, ValueCond(p, *ov)), NAMES, TEXT, op_values(bands=False)),
    event_conds(),
    st.builds(lambda a: EventCond(Aggregate(a), Op.GE, 1), specs()),
    st.builds(
        lambda steps, w: Funnel(tuple(steps), w),
        st.lists(specs(), min_size=2, max_size=3),
        st.none() | MICROS,
    ),
    st.builds(ConsentCond, NAMES),
    st.builds(AudienceCond, NAMES),
    st.builds(IdentifierCond, IDENTIFIER_TYPES),
)


def trees(leaves: st.SearchStrategy[Condition] = LEAVES) -> st.SearchStrategy[Condition]:
    """Trees the parser can build: groups of two parts or more, at most MAX_DEPTH deep."""
    groups = st.lists
    return st.recursive(
        leaves,
        lambda kids: st.one_of(
            st.builds(lambda parts: And(tuple(parts)), groups(kids, min_size=2, max_size=3)),
            st.builds(lambda parts: Or(tuple(parts)), groups(kids, min_size=2, max_size=3)),
            st.builds(Not, kids),
        ),
        max_leaves=8,
    ).filter(lambda node: depth(node) <= MAX_DEPTH)


@settings(max_examples=400, deadline=None)
@given(trees())
def test_parse_of_render_is_the_tree(node: Condition) -> None:
    checks.check_condition(node)
    back = parse_condition(render(node))
    assert repr(back) == repr(node)  # repr tells 1 from 1.0 and True, which == does not


@settings(max_examples=200, deadline=None)
@given(aggregates())
def test_parse_of_render_is_the_aggregate(aggregate: Aggregate) -> None:
    checks.check_aggregate(aggregate)
    assert repr(parse_aggregate(render_aggregate(aggregate))) == repr(aggregate)


def test_a_one_part_group_renders_as_its_part() -> None:
    part = trait("a", Op.EXISTS)
    assert render(And((part,))) == render(part)
    assert render(And((Or((part,)), part))) == "traits.a exists and traits.a exists"
