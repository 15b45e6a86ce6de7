"""Building observations for the pure identity domain, with a real keyed hasher (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cdp.keyring import SubjectIds
from services.identity.domain.decider import Observation, identities_of, previous_of
from services.identity.domain.rules import Rules, default_rules

HASH = SubjectIds("unit-test-subject-secret")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def observe(
    n: int,
    *,
    rules: Rules | None = None,
    message_type: str = "track",
    minutes: int | None = None,
    **payload: Any,
) -> Observation:
    """Message number `n` with these personal fields (camelCase, as Segment sends them)."""
    rules = rules or default_rules()
    previous = previous_of(payload, rules, HASH) if message_type == "alias" else None
    return Observation(
        event_id=f"00000000-0000-0000-0000-{n:012d}",
        message_id=f"m{n}",
        message_type=message_type,
        timestamp=T0 + timedelta(minutes=n if minutes is None else minutes),
        identities=identities_of(payload, rules, HASH),
        previous=previous,
        traits=payload.get("traits", {}) if message_type == "identify" else {},
        position=n,
    )


def subject(identifier_type: str, value: str) -> str:
    """The subject id of a (normalised) identifier."""
    return HASH(identifier_type, value)
