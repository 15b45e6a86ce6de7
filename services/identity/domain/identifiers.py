"""Identifiers a message carries: extraction, normalisation, and hashing into subject ids."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers

USER_ID = "user_id"
ANONYMOUS_ID = "anonymous_id"
EMAIL = "email"
PHONE = "phone"
DEVICE_ID = "device_id"
ADVERTISING_ID = "advertising_id"
EXTERNAL_PREFIX = "external:"
BUILT_IN_TYPES = (USER_ID, ANONYMOUS_ID, EMAIL, PHONE, DEVICE_ID, ADVERTISING_ID)

Hasher = Callable[[str, str], str]
"""`(identifier type, normalised value) -> subject id`: a `cdp.keyring.SubjectIds`."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One identifier: its type, normalised clear value (read model only) and subject id (everywhere else)."""

    type: str
    value: str
    subject: str


def external_type(namespace: str) -> str:
    """`crm_id` → `external:crm_id`."""
    return EXTERNAL_PREFIX + namespace.strip().lower()


def is_known_type(identifier_type: str) -> bool:
    """Whether the type is built in or an external namespace."""
    if identifier_type.startswith(EXTERNAL_PREFIX):
        return len(identifier_type) > len(EXTERNAL_PREFIX)
    return identifier_type in BUILT_IN_TYPES


def normalise(identifier_type: str, raw: Any) -> str | None:
    """The comparable form of a value, or None when it cannot identify anyone (empty, object, bad phone)."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, Mapping | list):
        return None
    text = str(raw)
    if identifier_type == EMAIL:
        text = text.strip().lower()
    elif identifier_type == PHONE:
        return e164(text)
    elif identifier_type not in (USER_ID, ANONYMOUS_ID):
        # userId/anonymousId are compared exactly, as ingest hashed them for the subject stream.
        text = text.strip()
    return text or None


@functools.lru_cache(maxsize=65_536)
def e164(text: str) -> str | None:
    """A phone number in E.164 (`+14155550100`), or None when it does not parse as a valid number."""
    try:
        number = phonenumbers.parse(text.strip(), None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def raw_identifiers(payload: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """`(type, raw value)` of every identifier in a message's personal fields, previousId excluded."""
    yield USER_ID, payload.get("userId")
    yield ANONYMOUS_ID, payload.get("anonymousId")
    context = _mapping(payload.get("context"))
    for traits in (_mapping(payload.get("traits")), _mapping(context.get("traits"))):
        yield EMAIL, traits.get("email")
        yield PHONE, traits.get("phone")
    device = _mapping(context.get("device"))
    yield DEVICE_ID, device.get("id")
    yield ADVERTISING_ID, device.get("advertisingId")
    externals = context.get("externalIds")
    for item in externals if isinstance(externals, list) else ():
        entry = _mapping(item)
        namespace = entry.get("type")
        if isinstance(namespace, str) and namespace.strip():
            yield external_type(namespace), entry.get("id")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
