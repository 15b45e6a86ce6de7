"""Normalisation and extraction of identifiers from a message's personal fields."""

from __future__ import annotations

from services.identity.domain.decider import identities_of
from services.identity.domain.identifiers import normalise, raw_identifiers
from services.identity.domain.rules import Rules, TypeRule, default_rules
from tests.unit.identity.helpers import HASH


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert normalise("email", "  Jane.Doe@Example.COM ") == "jane.doe@example.com"


def test_phones_become_e164_and_unparseable_ones_are_not_identifiers() -> None:
    assert normalise("phone", "+1 (415) 555-0132") == "+14155550132"
    assert normalise("phone", "+44 20 7946 0958") == "+442079460958"
    assert normalise("phone", "555-0132") is None  # no country: cannot be put in E.164
    assert normalise("phone", "call me") is None


def test_user_and_anonymous_ids_are_compared_exactly_and_objects_never_identify() -> None:
    assert normalise("user_id", " U-1 ") == " U-1 "
    assert normalise("device_id", {"a": 1}) is None
    assert normalise("user_id", True) is None
    assert normalise("user_id", 42) == "42"


def test_every_source_of_identifiers_is_read() -> None:
    payload = {
        "userId": "u1",
        "anonymousId": "a1",
        "traits": {"email": "e@x.io", "phone": "+14155550132"},
        "context": {
            "device": {"id": "d1", "advertisingId": "ad1"},
            "externalIds": [{"id": "c-9", "type": "CRM_id"}, {"id": "x"}],
        },
    }
    found = {(t, v) for t, v in raw_identifiers(payload) if v is not None}
    assert found == {
        ("user_id", "u1"),
        ("anonymous_id", "a1"),
        ("email", "e@x.io"),
        ("phone", "+14155550132"),
        ("device_id", "d1"),
        ("advertising_id", "ad1"),
        ("external:crm_id", "c-9"),
    }


def test_identities_come_in_priority_order_without_blocked_values() -> None:
    payload = {"anonymousId": "anonymous", "userId": "u1", "traits": {"email": "E@x.io"}}
    ids = identities_of(payload, default_rules(), HASH)
    assert [(i.type, i.value) for i in ids] == [("user_id", "u1"), ("email", "e@x.io")]
    assert ids[0].subject == HASH("user_id", "u1")


def test_configured_blocked_values_and_patterns() -> None:
    rules = Rules(
        (
            TypeRule(
                "email", 5, blocked_values=frozenset({"test@example.com"}), blocked_patterns=(r".*@spam\.io",)
            ),
        )
    )
    assert rules.is_blocked("email", "test@example.com")
    assert rules.is_blocked("email", "x@spam.io")
    assert not rules.is_blocked("email", "x@spam.io.com")
    assert rules.is_blocked("user_id", "[object Object]")
    assert rules.is_blocked("user_id", "NULL")
