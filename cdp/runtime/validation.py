"""Checks every request gets for the shared contract types, whatever the method.

Pagination, identifiers, profile references, time ranges and timestamps mean the same in every service, so they
are validated here once, walking the request, and reported as field violations with their paths
(`audience.window.start`, `identifiers[2].value`). Method-specific rules live in each service's domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from google.protobuf.message import Message

from cdp.errors import FieldViolation, InvalidInput

MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN = 1024
MAX_IDENTIFIER_VALUE = 1024
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def validate_request(request: Message) -> None:
    """Raise `InvalidInput` naming every field of a shared type that breaks its rules."""
    violations = list(_walk(request, ""))
    if violations:
        raise InvalidInput(violations)


def _walk(message: Message, path: str) -> Iterator[FieldViolation]:
    check = _CHECKS.get(message.DESCRIPTOR.full_name)
    if check is not None:
        yield from check(message, path)
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.full_name in _OPAQUE:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            for index, item in enumerate(value):
                yield from _walk(item, f"{name}[{index}]")
        else:
            yield from _walk(value, name)


def _page_request(message: Message, path: str) -> Iterator[FieldViolation]:
    page_size = message.page_size  # type: ignore[attr-defined]
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        yield FieldViolation(f"{path}.page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0: the default)")
    if len(message.page_token) > MAX_PAGE_TOKEN:  # type: ignore[attr-defined]
        yield FieldViolation(f"{path}.page_token", "is not a token this service issued")


def _identifier(message: Message, path: str) -> Iterator[FieldViolation]:
    if message.type == 0:  # type: ignore[attr-defined]
        yield FieldViolation(f"{path}.type", "is required")
    value = message.value  # type: ignore[attr-defined]
    if not value.strip():
        yield FieldViolation(f"{path}.value", "is required")
    elif len(value) > MAX_IDENTIFIER_VALUE:
        yield FieldViolation(f"{path}.value", f"is longer than {MAX_IDENTIFIER_VALUE} characters")


def _profile_ref(message: Message, path: str) -> Iterator[FieldViolation]:
    if message.WhichOneof("ref") is None:
        yield FieldViolation(path, "needs a profile_id or an identifier")
    elif message.WhichOneof("ref") == "profile_id" and not message.profile_id.strip():  # type: ignore[attr-defined]
        yield FieldViolation(f"{path}.profile_id", "is empty")


def _time_range(message: Message, path: str) -> Iterator[FieldViolation]:
    start, end = message.start, message.end  # type: ignore[attr-defined]
    if message.HasField("start") and message.HasField("end") and start.ToNanoseconds() > end.ToNanoseconds():
        yield FieldViolation(f"{path}.end", "is before start")


def _timestamp(message: Message, path: str) -> Iterator[FieldViolation]:
    seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
    if not 0 <= nanos < 1_000_000_000 or not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
        yield FieldViolation(path, f"must be between {EARLIEST.date()} and {LATEST.date()}")


# Free-form JSON (properties, traits, context) holds none of the shared types: not worth walking.
_OPAQUE = frozenset(("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"))

_CHECKS: dict[str, Callable[[Message, str], Iterator[FieldViolation]]] = {
    "cdp.common.v1.PageRequest": _page_request,
    "cdp.common.v1.Identifier": _identifier,
    "cdp.common.v1.ProfileRef": _profile_ref,
    "cdp.common.v1.TimeRange": _time_range,
    "google.protobuf.Timestamp": _timestamp,
}
