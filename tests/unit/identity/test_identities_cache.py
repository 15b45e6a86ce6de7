"""The resolver's cache of a message's identifiers gives exactly what extracting them afresh gives."""

from __future__ import annotations

from typing import Any

import pytest

from services.identity.domain.decider import identities_of
from services.identity.domain.rules import Rules, TypeRule, default_rules
from services.identity.prepare import IdentitiesCache
from tests.unit.identity.helpers import HASH

PAYLOADS: list[dict[str, Any]] = [
    {"userId": "u1", "anonymousId": "a1"},
    {"userId": "u1", "anonymousId": "a1", "traits": {"email": " P@X.io ", "phone": "+1 212 555 0100"}},
    {"anonymousId": "a1", "context": {"device": {"id": " d1 "}, "traits": {"email": "p@x.io"}}},
    {"userId": "null", "anonymousId": "a2"},  # blocked value
    {"userId": 1, "anonymousId": "a3"},  # not a string: 1, 1.0 and True are equal keys
    {"userId": 1.0, "anonymousId": "a3"},
    {"userId": True, "anonymousId": "a3"},
    {"anonymousId": "a1", "context": {"externalIds": [{"id": "c-1", "type": "CRM"}]}},
]


def test_cached_identities_equal_fresh_ones_on_every_lookup() -> None:
    cache, rules = IdentitiesCache(), default_rules()
    for _ in range(2):  # the second round is answered from the cache
        for payload in PAYLOADS:
            assert cache.identities(payload, rules, HASH) == identities_of(payload, rules, HASH)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_new_rules_are_not_answered_from_the_old_rules_cache(payload: dict[str, Any]) -> None:
    cache, rules = IdentitiesCache(), default_rules()
    cache.identities(payload, rules, HASH)
    blocking = Rules(
        (TypeRule("anonymous_id", blocked_values=frozenset({"a1", "a3"})), *rules.rules[1:]), version=1
    )
    assert cache.identities(payload, blocking, HASH) == identities_of(payload, blocking, HASH)


def test_clearing_forgets_every_entry() -> None:
    cache = IdentitiesCache()
    cache.identities(PAYLOADS[1], default_rules(), HASH)
    assert cache.found
    cache.clear()
    assert not cache.found
