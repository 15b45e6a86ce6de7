"""The Segment-spec message: validation, normalisation and clock-skew correction.

Input is the JSON shape every Segment and RudderStack SDK sends (camelCase keys); the gRPC edge converts its
protobuf message to the same shape, so there is exactly one set of rules. See
https://segment.com/docs/connections/spec/common/ for the fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cdp import payload
from cdp.errors import FieldViolation, InvalidInput
from services.ingest.domain.outcomes import Reason

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_MESSAGE_ID = 100
MAX_ID_LENGTH = 1024
MAX_EVENT_NAME = 512
EARLIEST_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=1)

_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")
# Never stored: the write key is a secret, and receivedAt is the server's to set.
_DROPPED = frozenset(("writeKey", "receivedAt"))
_SPEC_FIELDS = frozenset(
    (
        "type",
        "messageId",
        "userId",
        "anonymousId",
        "event",
        "name",
        "category",
        "groupId",
        "previousId",
        *_OBJECT_FIELDS,
        *_TIME_FIELDS,
        *_DROPPED,
    )
)


class InvalidMessage(InvalidInput):
    """A message that breaks the spec; `reason` classifies the first problem for the sender."""

    def __init__(self, violations: list[FieldViolation], reason: Reason) -> None:
        super().__init__(violations, reason=f"REJECTION_REASON_{reason.name}")
        self.rejection = reason


@dataclass(frozen=True)
class Message:
    """A valid Segment-spec message with its times settled; ids are strings, objects are dicts."""

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    group_id: str | None = None
    previous_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    integrations: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def subject_identifier(self) -> tuple[str, str]:
        """Which identifier names the subject whose stream and key hold this message: userId, else anonymousId."""
        if self.user_id is not None:
            return ("user_id", self.user_id)
        assert self.anonymous_id is not None  # validation guarantees one of the two
        return ("anonymous_id", self.anonymous_id)

    def personal_payload(self) -> dict[str, Any]:
        """Everything that may identify a person, to be encrypted with the subject's key."""
        payload: dict[str, Any] = {
            "userId": self.user_id,
            "anonymousId": self.anonymous_id,
            "groupId": self.group_id,
            "previousId": self.previous_id,
            "name": self.name,
            "category": self.category,
            "properties": self.properties,
            "traits": self.traits,
            "context": self.context,
            "integrations": self.integrations,
        }
        if self.extra:
            payload["extra"] = self.extra
        return {key: value for key, value in payload.items() if value not in (None, {})}

    def to_json(self) -> dict[str, Any]:
        """The message as Segment's JSON (what an access request or a destination receives)."""
        document: dict[str, Any] = {
            "type": self.type,
            "messageId": self.message_id,
            "timestamp": format_time(self.timestamp),
            "receivedAt": format_time(self.received_at),
            **{k: v for k, v in self.personal_payload().items() if k != "extra"},
            **self.extra,
        }
        if self.event is not None:
            document["event"] = self.event
        if self.original_timestamp is not None:
            document["originalTimestamp"] = format_time(self.original_timestamp)
        if self.sent_at is not None:
            document["sentAt"] = format_time(self.sent_at)
        return document


def parse_message(
    raw: Any,
    *,
    received_at: datetime,
    default_type: str | None = None,
    message_id: str | Callable[[], str] | None = None,
    path: str = "",
) -> Message:
    """Validate one raw message and settle its timestamps; raise `InvalidMessage` naming every bad field.

    `default_type` is the type implied by the endpoint (`/v1/track`); `message_id` (or what it returns when
    called) is used when the message has none (the caller makes it deterministic where it can, so retries
    still deduplicate).
    """
    prefix = f"{path}." if path else ""
    whole = path or "message"
    if not isinstance(raw, Mapping):
        raise InvalidMessage([FieldViolation(whole, "must be a JSON object")], Reason.INVALID_FIELD)
    size = _encoded_size(raw)
    if size > MAX_MESSAGE_BYTES:
        too_large = f"is {size} bytes; a message may have at most {MAX_MESSAGE_BYTES}"
        raise InvalidMessage([FieldViolation(whole, too_large)], Reason.MESSAGE_TOO_LARGE)
    problems: list[FieldViolation] = []
    reasons: list[Reason] = []

    def bad(name: str, description: str, reason: Reason = Reason.INVALID_FIELD) -> None:
        problems.append(FieldViolation(prefix + name, description))
        reasons.append(reason)

    def fail() -> InvalidMessage:
        return InvalidMessage(problems, reasons[0])

    kind = raw.get("type", default_type)
    if default_type is not None and kind != default_type and raw.get("type") is not None:
        bad("type", f"is {kind!r} but this endpoint takes {default_type!r} messages")
    if kind not in MESSAGE_TYPES:
        bad(
            "type",
            f"must be one of {', '.join(MESSAGE_TYPES)}",
            Reason.MISSING_FIELD if kind is None else Reason.INVALID_FIELD,
        )
        raise fail()

    user_id = _identifier(raw, "userId", bad)
    anonymous_id = _identifier(raw, "anonymousId", bad)
    previous_id = _identifier(raw, "previousId", bad)
    group_id = _identifier(raw, "groupId", bad)
    if kind == "alias":
        if previous_id is None:
            bad("previousId", "is required for alias", Reason.MISSING_FIELD)
        if user_id is None:
            bad("userId", "is required for alias", Reason.MISSING_FIELD)
    elif user_id is None and anonymous_id is None and not problems:
        bad("userId", "userId or anonymousId is required (a non-empty string)", Reason.MISSING_FIELD)
    if kind == "group" and group_id is None:
        bad("groupId", "is required for group", Reason.MISSING_FIELD)

    event = _text(raw, "event", MAX_EVENT_NAME, bad)
    if kind == "track" and not event:
        bad("event", "is required for track", Reason.MISSING_FIELD)
    name = _text(raw, "name", MAX_EVENT_NAME, bad)
    category = _text(raw, "category", MAX_EVENT_NAME, bad)

    given_id = _text(raw, "messageId", MAX_MESSAGE_ID, bad)
    objects = {key: _object(raw, key, bad) for key in _OBJECT_FIELDS}
    extra = {key: value for key, value in raw.items() if key not in _SPEC_FIELDS}
    # Everything stored as free JSON meets the platform's limits, or later reads and conversions would fail on it.
    for key, value in (*objects.items(), *extra.items()):
        for where, why in payload.problems(value, key):
            bad(where, why)
    times = {key: _time(raw, key, bad) for key in _TIME_FIELDS}
    if problems:
        raise fail()

    original = times["originalTimestamp"] or times["timestamp"]
    timestamp = settle_timestamp(original, times["sentAt"], received_at)
    if timestamp is None:
        bad(
            "sentAt",
            "is too far from the timestamp to correct the clock skew",
            Reason.TIMESTAMP_OUT_OF_RANGE,
        )
    elif timestamp < EARLIEST_TIMESTAMP:
        bad("timestamp", f"is before {EARLIEST_TIMESTAMP.date()}", Reason.TIMESTAMP_OUT_OF_RANGE)
    elif timestamp > received_at + MAX_FUTURE:
        bad("timestamp", "is more than a day in the future", Reason.TIMESTAMP_OUT_OF_RANGE)
    resolved_id = given_id or (message_id() if callable(message_id) else message_id)
    if not resolved_id:
        bad("messageId", "is required", Reason.MISSING_FIELD)
    if problems:
        raise fail()
    assert resolved_id is not None and timestamp is not None
    return Message(
        type=kind,
        message_id=resolved_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=timestamp,
        received_at=received_at,
        original_timestamp=original,
        sent_at=times["sentAt"],
        event=event,
        name=name,
        category=category,
        group_id=group_id,
        previous_id=previous_id,
        properties=objects["properties"],
        traits=objects["traits"],
        context=objects["context"],
        integrations=objects["integrations"],
        # Other top-level fields SDKs add (version, channel, _metadata…) travel with the payload, uninterpreted.
        extra=extra,
    )


def settle_timestamp(
    original: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime | None:
    """Segment's clock-skew correction: `receivedAt - (sentAt - originalTimestamp)` when the device sent both.

    None when the correction leaves the calendar (a year-1 `sentAt` beside a year-9999 `timestamp`).
    """
    if original is None:
        return received_at
    if sent_at is None:
        return original
    try:
        return received_at - (sent_at - original)
    except OverflowError:
        return None


class TimeOutOfRange(ValueError):
    """A well-formed date-time that no UTC datetime can hold."""


def parse_time(text: str) -> datetime:
    """An ISO-8601 date-time; naive values are taken as UTC. Raises ValueError when it is not one."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        raise TimeOutOfRange(f"{text[:40]!r} is outside the years 1 to 9999 in UTC") from None


def format_time(value: datetime) -> str:
    """ISO-8601 in UTC with milliseconds, as Segment writes times."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _identifier(raw: Mapping[str, Any], key: str, bad: Any) -> str | None:
    """Ids may be strings or numbers (SDKs send numeric user ids); empty or missing is None."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        bad(key, "must be a string")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        bad(key, "must be a string")
        return None
    text = value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))
    text = text.strip()
    if len(text) > MAX_ID_LENGTH:
        bad(key, f"is longer than {MAX_ID_LENGTH} characters")
        return None
    return text or None


def _text(raw: Mapping[str, Any], key: str, limit: int, bad: Any) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        bad(key, "must be a string")
        return None
    if len(value) > limit:
        bad(key, f"is longer than {limit} characters")
        return None
    return value.strip() or None


def _object(raw: Mapping[str, Any], key: str, bad: Any) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        bad(key, "must be a JSON object")
        return {}
    return dict(value)


def _time(raw: Mapping[str, Any], key: str, bad: Any) -> datetime | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        bad(key, "must be an ISO-8601 date-time string")
        return None
    try:
        return parse_time(value)
    except TimeOutOfRange as error:
        bad(key, str(error), Reason.TIMESTAMP_OUT_OF_RANGE)
        return None
    except ValueError:
        bad(key, f"{value[:40]!r} is not an ISO-8601 date-time")
        return None


def _encoded_size(raw: Mapping[str, Any]) -> int:
    """The message's size as compact UTF-8 JSON, as Segment counts its 32 KB limit."""
    try:
        return len(orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:  # integers beyond 64 bits; lone surrogates are refused later, when sealed
        return len(json.dumps(raw, separators=(",", ":"), default=str).encode())
