"""Consent carried by collected messages (Segment's consent management conventions)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from services.ingest.domain.messages import Message

CONSENT_UPDATED_EVENT = "Segment Consent Preference Updated"
"""The track event Segment's consent tools send when a person changes their preferences."""

_NOT_WORD = re.compile(r"[^a-z0-9]+")


def purpose_name(category: str) -> str:
    """`Functional Cookies` → `functional_cookies`: purposes are lower_snake_case everywhere in the platform."""
    return _NOT_WORD.sub("_", category.strip().lower()).strip("_")


def consent_preferences(message: Message) -> dict[str, bool] | None:
    """The purposes a message states consent for (`context.consent.categoryPreferences`), or None."""
    consent = message.context.get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, Mapping) else None
    if not isinstance(preferences, Mapping):
        return None
    stated = {
        purpose_name(str(category)): granted
        for category, granted in preferences.items()
        if isinstance(granted, bool) and purpose_name(str(category))
    }
    return stated or None


def is_consent_update(message: Message) -> bool:
    """Whether the message is the explicit 'preferences changed' event (always recorded, even if unchanged)."""
    return message.type == "track" and message.event == CONSENT_UPDATED_EVENT


def consent_change(message: Message, known: Mapping[str, bool] | None) -> dict[str, bool] | None:
    """The purposes to record as a ConsentChanged for the message's subject, or None when nothing changed."""
    stated = consent_preferences(message)
    if stated is None:
        return None
    if is_consent_update(message) or known is None:
        return stated
    changed = {purpose: granted for purpose, granted in stated.items() if known.get(purpose) != granted}
    return stated if changed else None
