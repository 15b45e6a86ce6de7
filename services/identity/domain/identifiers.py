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


PHONE_REGION = "phone_region"
"""Not an identifier: the region (`US`) of the message's `context.locale`, for phones written without a country
code. `raw_identifiers` yields it before the phones, so it is part of what a message's identifiers depend on."""


def normalise(identifier_type: str, raw: Any, region: str | None = None) -> str | None:
    """The comparable form of a value, or None when it cannot identify anyone (empty, object, bad phone).

    `region`: for phones, the region a number without a country code is read in (none: such a number is not
    an identifier, since it cannot be told apart from the same digits in another country).
    """
    if isinstance(raw, bool) or raw is None or isinstance(raw, Mapping | list):
        return None
    text = str(raw)
    if identifier_type == EMAIL:
        text = text.strip().lower()
    elif identifier_type == PHONE:
        return e164(text, region)
    elif identifier_type not in (USER_ID, ANONYMOUS_ID):
        # userId/anonymousId are compared exactly, as ingest hashed them for the subject stream.
        text = text.strip()
    return text or None


@functools.lru_cache(maxsize=65_536)
def e164(text: str, region: str | None = None) -> str | None:
    """A phone number in E.164 (`+14155550100`), or None when it does not parse as a valid number.

    A number with a country code (`+44 …`, `0044 …` is not one) is read as such whatever the region; one
    without is read in `region` when given.
    """
    try:
        number = phonenumbers.parse(text.strip(), region)
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
    region = locale_region(context.get("locale"))
    if region is not None:
        yield PHONE_REGION, region
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


def locale_region(locale: Any) -> str | None:
    """The region of a BCP 47 locale (`en-US`, `en_GB`, `zh-Hans-CN` → `US`, `GB`, `CN`) if phonenumbers knows
    it; None otherwise (no locale, a language alone, a numeric region such as `es-419`)."""
    if not isinstance(locale, str):
        return None
    last = locale.replace("_", "-").rsplit("-", 1)[-1].upper()
    if len(last) != 2 or last == locale.upper() or last not in phonenumbers.SUPPORTED_REGIONS:
        return None
    return last


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
