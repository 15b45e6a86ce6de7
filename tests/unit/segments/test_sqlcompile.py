"""Tricky semantics, each shown on both evaluators: the SQL of `sqlcompile` and Python's `evaluate` must give
the same, expected, members."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from services.segments import loading, sqlcompile, tables
from services.segments.domain.conditions import (
    ALL_TIME,
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
    Not,
    Op,
    Or,
    TraitCond,
    ValueCond,
    Window,
)
from services.segments.domain.evaluate import evaluate
from services.segments.loading import EventRecord, ProfileRecord
from tests.unit.segments.agreement import load
from tests.unit.segments.strategies import HOUR, NOW, Population

ENGINE = create_engine("sqlite://", poolclass=StaticPool)
tables.metadata.create_all(ENGINE)


def members(
    profiles: list[ProfileRecord],
    node: Condition,
    audiences: dict[str, Condition | None] | None = None,
    unattributed: tuple[EventRecord, ...] = (),
) -> set[str]:
    """The members by both evaluators (which must agree)."""
    definitions = (audiences or {}).get
    load(ENGINE, Population(tuple(profiles), unattributed))
    with ENGINE.connect() as connection:
        found = set(connection.execute(sqlcompile.members(node, NOW, definitions)).scalars())
    expected = {r.profile_id for r in profiles if evaluate(node, loading.facts(r), NOW, definitions)}
    assert found == expected
    return found


def trait(path: str, op: Op, value: Any = None, band: Band | None = None) -> TraitCond:
    return TraitCond(ValueCond(path, op, value, band))


def traits(**profiles: dict[str, Any]) -> list[ProfileRecord]:
    return [ProfileRecord(profile_id, traits) for profile_id, traits in profiles.items()]


def test_negative_operators_hold_when_the_value_is_absent() -> None:
    people = traits(pro={"plan": "pro"}, free={"plan": "free"}, none={}, null={"plan": None})
    assert members(people, trait("plan", Op.NE, "pro")) == {"free", "none", "null"}
    assert members(people, trait("plan", Op.NOT_IN, ("pro", "free"))) == {"none", "null"}
    assert members(people, trait("plan", Op.NOT_EXISTS)) == {"none", "null"}
    assert members(people, trait("plan", Op.EXISTS)) == {"pro", "free"}
    assert members(people, trait("plan", Op.EQ, None)) == {"null"}
    assert members(people, Not(trait("plan", Op.EQ, "pro"))) == {"free", "none", "null"}


def test_contains_is_case_sensitive_and_takes_wildcards_literally() -> None:
    people = traits(
        upper={"name": "PRO plan"},
        lower={"name": "pro plan"},
        percent={"name": "100% off"},
        underscore={"name": "a_b"},
        plain={"name": "axb"},
        tags={"name": 1, "tags": ["pro", "Pro"]},
    )
    assert members(people, trait("name", Op.CONTAINS, "pro")) == {"lower"}
    assert members(people, trait("name", Op.CONTAINS, "%")) == {"percent"}
    assert members(people, trait("name", Op.CONTAINS, "_")) == {"underscore"}
    assert members(people, trait("name", Op.CONTAINS, "a_b")) == {"underscore"}
    assert members(people, trait("name", Op.STARTS_WITH, "PRO")) == {"upper"}
    assert members(people, trait("name", Op.STARTS_WITH, "a_")) == {"underscore"}
    assert members(people, trait("name", Op.ENDS_WITH, "%_off")) == set()
    assert members(people, trait("name", Op.ENDS_WITH, "b")) == {"underscore", "plain"}
    assert members(people, trait("name", Op.ENDS_WITH, "")) == {
        "upper",
        "lower",
        "percent",
        "underscore",
        "plain",
    }
    assert members(people, trait("tags", Op.CONTAINS, "Pro")) == {"tags"}  # a list holding the element
    assert members(people, trait("tags", Op.CONTAINS, "P")) == set()  # elements are equal, not substrings


def test_strings_that_look_like_numbers_are_strings() -> None:
    people = traits(text={"age": "20"}, number={"age": 20}, float={"age": 20.0}, yes={"age": True})
    assert members(people, trait("age", Op.GT, 10)) == {"number", "float"}
    assert members(people, trait("age", Op.EQ, 20)) == {"number", "float"}
    assert members(people, trait("age", Op.EQ, "20")) == {"text"}
    assert members(people, trait("age", Op.GT, "100")) == {"text"}  # code point order
    assert members(people, trait("age", Op.EQ, 1)) == set()  # a bool is not the number 1
    assert members(people, trait("age", Op.EQ, True)) == {"yes"}
    band = Band("age", "adult", 18.0, 21.0)
    assert members(people, trait("age", Op.IN_BAND, "adult", band)) == {"number", "float"}
    assert members(people, trait("age", Op.IN_BAND, "x", Band("age", "x", 10.0, 20.0))) == set()
    assert members(people, trait("age", Op.IN_BAND, "x", Band("age", "x", 20.0, None))) == {"number", "float"}
    assert members(people, trait("age", Op.IN_BAND, "x", None)) == set()  # no band resolved: nothing


def test_consent_is_the_latest_decision_being_a_grant() -> None:
    people = [
        ProfileRecord("granted", consent={"marketing": True}),
        ProfileRecord("refused", consent={"marketing": False, "ads": True}),
        ProfileRecord("unasked"),
    ]
    assert members(people, ConsentCond("marketing")) == {"granted"}
    assert members(people, Not(ConsentCond("marketing"))) == {"refused", "unasked"}


def test_text_is_compared_on_its_first_512_characters() -> None:
    people = traits(long={"note": "x" * 512 + "tail"}, short={"note": "x" * 511})
    assert members(people, trait("note", Op.EQ, "x" * 512 + "other")) == {"long"}
    assert members(people, trait("note", Op.ENDS_WITH, "tail")) == set()
    assert members(people, trait("note", Op.LT, "x" * 600)) == {"short"}


def test_within_last_reads_timestamps_with_an_offset() -> None:
    people = traits(
        recent={"seen": "2023-11-14T22:12:20Z"},  # exactly 60 s before NOW
        other_zone={"seen": "2023-11-14T23:12:30+01:00"},  # 50 s before NOW
        old={"seen": "2023-11-14T22:12:19Z"},
        naive={"seen": "2023-11-14T22:13:00"},
    )
    assert members(people, trait("seen", Op.WITHIN_LAST, 60)) == {"recent", "other_zone"}


def test_dotted_keys_and_nested_objects_name_one_value() -> None:
    people = traits(both={"a.b": 1, "a": {"b": 2}}, nested={"a": {"b": 2}})
    assert members(people, trait("a.b", Op.EQ, 2)) == {"nested"}
    assert members(people, trait("a.b", Op.EQ, 1)) == {"both"}


def order(position: int, offset: int, amount: Any = None, name: str = "Order") -> EventRecord:
    properties = {} if amount is None else {"amount": amount}
    return EventRecord(position, NOW + offset, "track", name, properties)


def event(agg: Agg, op: Op, value: Any, prop: str | None = "amount", window: Window = ALL_TIME) -> EventCond:
    return EventCond(Aggregate(EventSpec("track", "Order"), agg, prop, window), op, value)


def test_count_is_zero_without_events_and_windows_cut() -> None:
    people = [
        ProfileRecord("none"),
        ProfileRecord("one", events=(order(1, -2 * HOUR),)),
        ProfileRecord("two", events=(order(2, -HOUR), order(3, 0))),
        ProfileRecord("other", events=(order(4, 0, name="View"),)),
    ]
    loose = (order(5, 0), order(6, 0))  # nobody's yet: never counted
    assert members(people, event(Agg.COUNT, Op.EQ, 0), unattributed=loose) == {"none", "other"}
    assert members(people, event(Agg.COUNT, Op.LT, 2), unattributed=loose) == {"none", "one", "other"}
    assert members(people, event(Agg.COUNT, Op.GE, 2)) == {"two"}
    assert members(people, event(Agg.COUNT, Op.GE, 1, window=Window(within=HOUR))) == {"two"}
    assert members(people, event(Agg.COUNT, Op.EQ, 1, window=Window(within=HOUR - 1))) == {"two"}
    assert members(people, event(Agg.COUNT, Op.EQ, 1, window=Window(start=NOW - HOUR, end=NOW))) == {"two"}
    assert members(people, event(Agg.COUNT, Op.NE, 1)) == {"none", "two", "other"}
    assert members(people, event(Agg.UNIQUE_COUNT, Op.EQ, 0)) == {"none", "one", "two", "other"}
    assert members(people, event(Agg.UNIQUE_COUNT, Op.EQ, 0, prop=None)) == {"none", "one", "two", "other"}
    assert members(people, event(Agg.SUM, Op.NE, 0, prop=None)) == {"none", "one", "two", "other"}


def test_sums_skip_what_is_not_a_number_and_are_absent_without_one() -> None:
    people = [
        ProfileRecord("mixed", events=(order(1, 0, 2), order(2, 0, "3"), order(3, 0, True), order(4, 0, 5))),
        ProfileRecord("text", events=(order(5, 0, "10"),)),
        ProfileRecord("none"),
    ]
    assert members(people, event(Agg.SUM, Op.EQ, 7)) == {"mixed"}
    assert members(people, event(Agg.AVERAGE, Op.EQ, 3.5)) == {"mixed"}
    assert members(people, event(Agg.MIN, Op.EQ, 2)) == {"mixed"}
    assert members(people, event(Agg.MAX, Op.GT, 4)) == {"mixed"}
    assert members(people, event(Agg.SUM, Op.NE, 7)) == {"text", "none"}
    assert members(people, event(Agg.SUM, Op.NOT_EXISTS, None)) == {"text", "none"}
    assert members(people, event(Agg.UNIQUE_COUNT, Op.EQ, 4)) == {"mixed"}  # 2, "3", true, 5
    assert members(people, event(Agg.UNIQUE_COUNT, Op.EQ, 1)) == {"text"}


def test_first_and_last_break_time_ties_by_position() -> None:
    people = [
        ProfileRecord("tie", events=(order(7, 0, "late"), order(3, 0, "early"), order(9, 0), order(1, -1))),
        ProfileRecord("none", events=(order(2, 0),)),
    ]
    assert members(people, event(Agg.FIRST, Op.EQ, "early")) == {"tie"}
    assert members(people, event(Agg.LAST, Op.EQ, "late")) == {"tie"}  # the last with a value at the property
    assert members(people, event(Agg.LAST, Op.CONTAINS, "at")) == {"tie"}
    assert members(people, event(Agg.FIRST, Op.NE, "early")) == {"none"}
    assert members(people, event(Agg.FIRST, Op.EXISTS, None)) == {"tie"}


def test_funnel_steps_follow_in_time_then_position_order() -> None:
    a, b = EventSpec("track", "A"), EventSpec("track", "B")
    people = [
        ProfileRecord(
            "same_time", events=(EventRecord(1, NOW, "track", "A"), EventRecord(2, NOW, "track", "B"))
        ),
        ProfileRecord(
            "reversed", events=(EventRecord(4, NOW, "track", "A"), EventRecord(3, NOW, "track", "B"))
        ),
        ProfileRecord(
            "late", events=(EventRecord(5, NOW - HOUR, "track", "A"), EventRecord(6, NOW, "track", "B"))
        ),
        ProfileRecord("once", events=(EventRecord(7, NOW, "track", "A"),)),
    ]
    assert members(people, Funnel((a, b))) == {"same_time", "late"}
    assert members(people, Funnel((a, b), within=HOUR - 1)) == {"same_time"}
    assert members(people, Funnel((a, a))) == set()  # one event is not two steps
    assert members(people, Funnel((a,))) == {"same_time", "reversed", "late", "once"}


def test_funnel_finds_a_chain_the_earliest_next_step_would_not_block() -> None:
    a, b, c = EventSpec("track", "A"), EventSpec("track", "B"), EventSpec("track", "C")
    history = (
        EventRecord(1, NOW - 3 * HOUR, "track", "A"),
        EventRecord(2, NOW - 2 * HOUR, "track", "B"),
        EventRecord(3, NOW - HOUR, "track", "A"),
        EventRecord(4, NOW - HOUR + 1, "track", "B"),
        EventRecord(5, NOW, "track", "C"),
    )
    people = [ProfileRecord("p", events=history)]
    assert members(people, Funnel((a, b, c), within=HOUR)) == {"p"}  # from the second A
    assert members(people, Funnel((a, b, c), within=HOUR - 1)) == set()


def test_computed_values_and_nested_audiences() -> None:
    people = [
        ProfileRecord("rich", computed={"ltv": 150, "tags": ["vip"]}),
        ProfileRecord("poor", computed={"ltv": 10}),
        ProfileRecord("unknown", computed={"ltv": None}),
    ]
    ltv = ComputedCond("ltv", ValueCond("", Op.GT, 100))
    vip = ComputedCond("tags", ValueCond("", Op.CONTAINS, "vip"))
    definitions: dict[str, Condition | None] = {
        "big": ltv,
        "gone": None,
        "either": Or((AudienceCond("big"), vip)),
    }
    assert members(people, ltv) == {"rich"}
    assert members(people, ComputedCond("ltv", ValueCond("", Op.NOT_EXISTS))) == {"unknown"}
    assert members(people, AudienceCond("either"), definitions) == {"rich"}
    assert members(people, Not(AudienceCond("gone")), definitions) == {"rich", "poor", "unknown"}
    assert members(people, And(()), definitions) == {"rich", "poor", "unknown"}
    assert members(people, Or(()), definitions) == set()


def test_cycles_among_audiences_are_refused() -> None:
    definitions: dict[str, Condition | None] = {"a": AudienceCond("b"), "b": AudienceCond("a")}
    with pytest.raises(ValueError, match="cycle"):
        sqlcompile.members(AudienceCond("a"), NOW, definitions.get)


def test_paging_by_profile_id() -> None:
    people = traits(**{f"p{i}": {"plan": "pro" if i % 2 else "free"} for i in range(10)})
    load(ENGINE, Population(tuple(people), ()))
    query = sqlcompile.members(trait("plan", Op.EQ, "pro"), NOW)
    with ENGINE.connect() as connection:
        page = connection.execute(
            query.where(tables.profiles.c.profile_id > "p3").order_by(tables.profiles.c.profile_id).limit(2)
        ).scalars()
        assert list(page) == ["p5", "p7"]
