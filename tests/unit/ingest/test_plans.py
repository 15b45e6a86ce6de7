"""Tracking plans: validation of a plan, and the decision a compiled plan takes about each message."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.errors import InvalidInput
from services.ingest.domain.messages import Message, parse_message
from services.ingest.domain.plans import Verdict, ViolationReason
from services.ingest.domain.tracking_plans import (
    Enforcement,
    PlanBook,
    PlannedEvent,
    TrackingPlan,
    validate_plan,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ORDER = {
    "type": "object",
    "properties": {
        "revenue": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
        "sku": {"type": "string"},
    },
    "required": ["revenue", "currency"],
}


def plan(**enforcement: Any) -> TrackingPlan:
    return TrackingPlan(
        plan_id="shop",
        events=(
            PlannedEvent("track", "Order Completed", ORDER),
            PlannedEvent("identify", "", {"type": "object", "properties": {"plan": {"type": "string"}}}),
            PlannedEvent("page", "", {"type": "object"}),
        ),
        sources=(Enforcement("web", **enforcement),),
        version=1,
    )


def book(**enforcement: Any) -> PlanBook:
    plans = PlanBook()
    plans.install(plan(**enforcement))
    return plans


def track(event: str = "Order Completed", **properties: Any) -> Message:
    raw = {"type": "track", "userId": "u", "event": event, "messageId": "m", "properties": properties}
    return parse_message(raw, received_at=NOW)


def reasons(decision: Any) -> list[tuple[ViolationReason, str]]:
    return [(v.reason, v.field) for v in decision.violations]


def test_a_message_that_fits_its_plan_is_allowed_unchanged() -> None:
    message = track(revenue=10, currency="EUR")
    decision = book(unplanned_events=Verdict.BLOCK, schema_violations=Verdict.BLOCK).check("web", message)
    assert decision.verdict is Verdict.ALLOW and decision.violations == () and decision.message is message


def test_an_unplanned_event_is_flagged_or_blocked_as_the_source_says() -> None:
    flagged = book(unplanned_events=Verdict.FLAG).check("web", track("Cart Viewed"))
    blocked = book(unplanned_events=Verdict.BLOCK).check("web", track("Cart Viewed"))
    allowed = book(unplanned_events=Verdict.ALLOW).check("web", track("Cart Viewed"))
    assert flagged.verdict is Verdict.FLAG and reasons(flagged) == [(ViolationReason.UNPLANNED_EVENT, "")]
    assert blocked.verdict is Verdict.BLOCK
    assert allowed.verdict is Verdict.ALLOW and allowed.violations == (), "ALLOW records nothing"


def test_schema_errors_map_to_the_contract_reasons_with_field_paths() -> None:
    decision = book(schema_violations=Verdict.FLAG).check("web", track(revenue="ten", sku=3))
    assert sorted(reasons(decision), key=str) == sorted(
        [
            (ViolationReason.INVALID_TYPE, "properties.revenue"),
            (ViolationReason.INVALID_TYPE, "properties.sku"),
            (ViolationReason.MISSING_REQUIRED, "properties.currency"),
        ],
        key=str,
    )
    negative = book(schema_violations=Verdict.BLOCK).check("web", track(revenue=-1, currency="GBP"))
    assert negative.verdict is Verdict.BLOCK
    assert set(reasons(negative)) == {
        (ViolationReason.INVALID_VALUE, "properties.revenue"),
        (ViolationReason.INVALID_VALUE, "properties.currency"),
    }


def test_violation_descriptions_never_repeat_the_values_sent() -> None:
    decision = book(schema_violations=Verdict.FLAG).check(
        "web", track(revenue="jane@example.com", currency="secret-value")
    )
    text = " ".join(v.description for v in decision.violations)
    assert "jane@example.com" not in text and "secret-value" not in text


def test_unplanned_properties_are_omitted_and_recorded_when_the_source_asks() -> None:
    message = track(revenue=5, currency="USD", coupon="X1", internal=True)
    decision = book(omit_unplanned_properties=True).check("web", message)
    assert decision.verdict is Verdict.FLAG
    assert decision.message.properties == {"revenue": 5, "currency": "USD"}
    assert reasons(decision) == [
        (ViolationReason.UNPLANNED_PROPERTY, "properties.coupon"),
        (ViolationReason.UNPLANNED_PROPERTY, "properties.internal"),
    ]
    kept = book().check("web", message)
    assert kept.message.properties == message.properties and kept.verdict is Verdict.ALLOW


def test_identify_traits_and_page_fallback_entries_are_checked() -> None:
    identify = parse_message(
        {"type": "identify", "userId": "u", "messageId": "i", "traits": {"plan": 3}}, received_at=NOW
    )
    decision = book(schema_violations=Verdict.FLAG).check("web", identify)
    assert reasons(decision) == [(ViolationReason.INVALID_TYPE, "traits.plan")]
    page = parse_message({"type": "page", "userId": "u", "messageId": "p", "name": "Home"}, received_at=NOW)
    assert book(unplanned_events=Verdict.BLOCK).check("web", page).verdict is Verdict.ALLOW


def test_the_common_schema_applies_to_every_message() -> None:
    common = {"type": "object", "required": ["context"], "properties": {"context": {"required": ["app"]}}}
    plans = PlanBook()
    plans.install(
        TrackingPlan(
            "apps",
            common_schema=common,
            sources=(Enforcement("ios", Verdict.ALLOW, Verdict.BLOCK),),
            version=1,
        )
    )
    decision = plans.check("ios", track())
    assert decision.verdict is Verdict.BLOCK
    assert {v.reason for v in decision.violations} == {ViolationReason.COMMON_SCHEMA}


def test_sources_without_a_plan_and_older_versions_are_ignored() -> None:
    plans = book(unplanned_events=Verdict.BLOCK)
    assert plans.check("ios", track("Anything")).verdict is Verdict.ALLOW
    assert not plans.install(plan(unplanned_events=Verdict.ALLOW)), "same version: no change"
    newer = TrackingPlan("shop", sources=(), version=2)
    assert plans.install(newer)
    assert plans.check("web", track("Anything")).verdict is Verdict.ALLOW, "web left the plan"


def test_validation_names_the_event_and_the_schema_path() -> None:
    bad = TrackingPlan(
        plan_id="Shop Plan",
        events=(
            PlannedEvent("track", "A", {"type": "object", "properties": {"n": {"type": "integr"}}}),
            PlannedEvent("track", "A", {}),
            PlannedEvent("track", "", {}),
            PlannedEvent("identify", "x", {}),
        ),
        sources=(Enforcement("web"), Enforcement("web"), Enforcement("ios")),
    )
    with pytest.raises(InvalidInput) as raised:
        validate_plan(bad, {"ios": "other"})
    fields = [v.field for v in raised.value.violations]
    assert "plan.plan_id" in fields
    assert "plan.events[0].json_schema.properties.n.type" in fields
    assert (
        "plan.events[1]" in fields and "plan.events[2].event" in fields and "plan.events[3].event" in fields
    )
    assert "plan.sources[1].source_id" in fields and "plan.sources[2].source_id" in fields


def test_a_plan_round_trips_through_its_stored_rules() -> None:
    original = plan(
        unplanned_events=Verdict.FLAG, schema_violations=Verdict.BLOCK, omit_unplanned_properties=True
    )
    again = TrackingPlan.from_json("shop", original.to_json(), version=1)
    assert again == original


def test_checking_a_planned_message_costs_microseconds() -> None:
    plans = book(unplanned_events=Verdict.BLOCK, schema_violations=Verdict.BLOCK)
    message = track(revenue=10, currency="EUR", sku="A-1")
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        plans.check("web", message)
    per_message = (time.perf_counter() - started) / rounds
    assert per_message < 500e-6, f"{per_message * 1e6:.1f} µs per check"
