"""Consent folded per purpose, merged over a person's subjects, with defaults per jurisdiction regime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.governance.domain.consent import (
    ConsentDefaults,
    Decision,
    Regime,
    consent_at,
    in_force,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DEFAULTS = ConsentDefaults.parse(("analytics", "advertising"), {"eu": "opt_in", "us-ca": "opt_out"}, "eu")


def decision(
    purpose: str, granted: bool, minutes: int, position: int, subject: str = "s1", **more: str
) -> Decision:
    return Decision(subject, purpose, granted, T0 + timedelta(minutes=minutes), position, **more)


def test_the_latest_effective_decision_wins_per_purpose() -> None:
    decisions = [
        decision("analytics", True, 0, 1),
        decision("analytics", False, 10, 2),
        decision("advertising", True, 5, 3),
    ]
    current = in_force(decisions, T0 + timedelta(minutes=20))
    assert {p: d.granted for p, d in current.items()} == {"analytics": False, "advertising": True}


def test_as_of_a_past_moment_ignores_later_decisions() -> None:
    decisions = [decision("analytics", True, 0, 1), decision("analytics", False, 10, 2)]
    assert in_force(decisions, T0 + timedelta(minutes=5))["analytics"].granted is True
    assert in_force(decisions, T0 - timedelta(minutes=1)) == {}


def test_a_backdated_decision_recorded_later_does_not_override_a_newer_one() -> None:
    decisions = [decision("analytics", False, 10, 1), decision("analytics", True, 0, 2)]
    assert in_force(decisions, T0 + timedelta(hours=1))["analytics"].granted is False


def test_decisions_effective_at_once_are_ordered_by_the_log() -> None:
    decisions = [decision("analytics", False, 0, 7), decision("analytics", True, 0, 3)]
    assert in_force(decisions, T0)["analytics"].granted is False


def test_a_persons_subjects_merge_latest_wins() -> None:
    decisions = [
        decision("analytics", True, 0, 1, subject="anonymous"),
        decision("analytics", False, 30, 2, subject="user"),
        decision("advertising", True, 40, 3, subject="anonymous"),
    ]
    state = consent_at(decisions, T0 + timedelta(hours=1), DEFAULTS)
    assert state.granted("analytics") is False
    assert state.granted("advertising") is True


def test_opt_in_denies_and_opt_out_grants_until_decided() -> None:
    eu = consent_at([], T0, DEFAULTS, "eu")
    ca = consent_at([], T0, DEFAULTS, "us-ca")
    assert [(p.purpose, p.granted, p.is_default) for p in eu.purposes] == [
        ("advertising", False, True),
        ("analytics", False, True),
    ]
    assert [(p.purpose, p.granted, p.is_default) for p in ca.purposes] == [
        ("advertising", True, True),
        ("analytics", True, True),
    ]


def test_decided_purposes_are_not_defaults_and_unconfigured_ones_still_show() -> None:
    decisions = [decision("analytics", True, 0, 1), decision("newsletter", True, 0, 2)]
    state = consent_at(decisions, T0, DEFAULTS)
    by_purpose = {p.purpose: p for p in state.purposes}
    assert sorted(by_purpose) == ["advertising", "analytics", "newsletter"]
    assert not by_purpose["analytics"].is_default and by_purpose["advertising"].is_default


def test_the_jurisdiction_is_the_asked_one_else_the_latest_decisions_else_the_default() -> None:
    decisions = [decision("analytics", False, 0, 1, jurisdiction="us-ca")]
    assert consent_at(decisions, T0, DEFAULTS).jurisdiction == "us-ca"
    assert consent_at(decisions, T0, DEFAULTS).granted("advertising") is True
    assert consent_at(decisions, T0, DEFAULTS, "eu").granted("advertising") is False
    assert consent_at([], T0, DEFAULTS).jurisdiction == "eu"


def test_defaults_refuse_an_unknown_regime_or_default_jurisdiction() -> None:
    with pytest.raises(ValueError):
        ConsentDefaults.parse(("analytics",), {"eu": "maybe"}, "eu")
    with pytest.raises(ValueError):
        ConsentDefaults.parse(("analytics",), {"eu": "opt_in"}, "us")
    assert DEFAULTS.regime("") is Regime.OPT_IN
    assert DEFAULTS.knows("us-ca") and not DEFAULTS.knows("us")


@given(
    st.lists(
        st.tuples(st.sampled_from(["analytics", "advertising"]), st.booleans(), st.integers(0, 50)),
        max_size=20,
    )
)
def test_the_state_is_the_last_decision_in_effective_then_log_order(
    items: list[tuple[str, bool, int]],
) -> None:
    decisions = [decision(p, g, m, i) for i, (p, g, m) in enumerate(items)]
    expected: dict[str, bool] = {}
    for d in sorted(decisions, key=lambda d: (d.effective_at, d.position)):
        expected[d.purpose] = d.granted
    state = consent_at(decisions, T0 + timedelta(hours=1), DEFAULTS)
    for purpose in ("analytics", "advertising"):
        assert state.granted(purpose) is expected.get(purpose, False)
