"""Normalisation and extraction of identifiers from a message's personal fields."""

from __future__ import annotations

from services.identity.domain.decider import identities_of
from services.identity.domain.identifiers import locale_region, normalise, raw_identifiers
from services.identity.domain.rules import Rules, TypeRule, default_rules
from services.identity.prepare import IdentitiesCache
from tests.unit.identity.helpers import HASH


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert normalise("email", "  Jane.Doe@Example.COM ") == "jane.doe@example.com"


def test_phones_become_e164_and_unparseable_ones_are_not_identifiers() -> None:
    assert normalise("phone", "+1 (415) 555-0132") == "+14155550132"
    assert normalise("phone", "+44 20 7946 0958") == "+442079460958"
    assert normalise("phone", "555-0132") is None  # no country: cannot be put in E.164
    assert normalise("phone", "call me") is None


def test_a_phone_without_country_code_is_read_in_the_region_of_the_message_locale() -> None:
    payload = {"userId": "u1", "traits": {"phone": "(415) 555-0132"}, "context": {"locale": "en-US"}}
    ids = identities_of(payload, default_rules(), HASH)
    assert [(i.type, i.value) for i in ids] == [("user_id", "u1"), ("phone", "+14155550132")]
    # A country code wins over the locale; a number invalid in the locale's region is still no identifier.
    abroad = {**payload, "traits": {"phone": "+44 20 7946 0958"}}
    assert [i.value for i in identities_of(abroad, default_rules(), HASH)][1:] == ["+442079460958"]
    british = {**payload, "traits": {"phone": "020 7946 0958"}, "context": {"locale": "en_GB"}}
    assert [i.value for i in identities_of(british, default_rules(), HASH)][1:] == ["+442079460958"]
    without = {"userId": "u1", "traits": {"phone": "(415) 555-0132"}}
    assert [i.type for i in identities_of(without, default_rules(), HASH)] == ["user_id"]
    # The cache keys on the region too: the same digits under another locale are another number (or none).
    cache = IdentitiesCache()
    for case in (payload, british, without, {**payload, "context": {"locale": "en-GB"}}):
        assert cache.identities(case, default_rules(), HASH) == identities_of(case, default_rules(), HASH)


def test_locale_regions() -> None:
    assert [locale_region(x) for x in ("en-US", "en_GB", "zh-Hans-CN", "de", "es-419", "en-ZZ", None, 7)] == [
        "US",
        "GB",
        "CN",
        None,
        None,
        None,
        None,
        None,
    ]


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
