"""Checks every request gets for the shared contract types, whatever the method.

Pagination, identifiers, profile references, time ranges and timestamps mean the same in every service, so they
are validated here once, walking the request, and reported as field violations with their paths
(`audience.window.start`, `identifiers[2].value`). Method-specific rules live in each service's domain.
The gRPC edge's interceptor runs this on every request message, so servicers never call it.

A collected `cdp.common.v1.Message` is data that ingest's collector judges message by message (its time rules are
stricter), so that one bad message in a `Batch` never sinks the others. Here its timestamps only have to be
well-formed (nanos in range, a year from 1 to 9999): what turning it into Segment's JSON needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from cdp.errors import FieldViolation, InvalidInput

MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN = 1024
MAX_IDENTIFIER_VALUE = 1024
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# What google.protobuf.Timestamp can represent at all: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_EARLIEST_REPRESENTABLE, _LATEST_REPRESENTABLE = -62_135_596_800, 253_402_300_799
_NANOS = 1_000_000_000
_EARLIEST_SECONDS, _LATEST_SECONDS = int(EARLIEST.timestamp()), int(LATEST.timestamp())

Problems = list[tuple[str, str]]
"""What a check finds: `(field relative to the checked message, "" for the message itself; description)`."""


def validate_request(request: Message, path: str = "") -> None:
    """Raise `InvalidInput` naming every field of a shared type that breaks its rules (paths under `path`)."""
    violations: list[FieldViolation] = []
    _walk(_plan(request.DESCRIPTOR), request, path, violations)
    if violations:
        raise InvalidInput(violations)


@dataclass(frozen=True)
class _Plan:
    """What to do with one message type: its own check, and the fields that may hold a checked type."""

    check: Callable[[Message], Problems] | None
    singular: tuple[tuple[str, Descriptor], ...]
    repeated: tuple[tuple[str, Descriptor], ...]


def _walk(plan: _Plan, message: Message, path: str, out: list[FieldViolation]) -> None:
    if plan.check is not None:
        _report(plan.check(message), path, out)
    for name, kind in plan.singular:
        if message.HasField(name):
            _walk(_plan(kind), getattr(message, name), _join(path, name), out)
    for name, kind in plan.repeated:
        items = getattr(message, name)
        if items:
            _walk_items(_plan(kind), items, _join(path, name), out)


def _walk_items(plan: _Plan, items: Any, path: str, out: list[FieldViolation]) -> None:
    if plan.singular or plan.repeated or plan.check is None:
        for index, item in enumerate(items):
            _walk(plan, item, f"{path}[{index}]", out)
        return
    # Leaves (the 2,500 messages of a batch): check each, and build its path only if it has a problem.
    check = plan.check
    for index, item in enumerate(items):
        problems = check(item)
        if problems:
            _report(problems, f"{path}[{index}]", out)


def _report(problems: Problems, path: str, out: list[FieldViolation]) -> None:
    out.extend(FieldViolation(_join(path, field), why) for field, why in problems)


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path and field else path or field


@functools.cache
def _plan(descriptor: Descriptor) -> _Plan:
    """Computed once per message type, so a walk visits only the fields that can hold a checked type."""
    check = _CHECKS.get(descriptor.full_name)
    if descriptor.full_name in _LEAVES:
        return _Plan(check, (), ())
    fields = [
        (f.name, f.message_type, f.is_repeated)
        for f in descriptor.fields
        if f.message_type is not None and _may_hold_checked(f.message_type, frozenset())
    ]
    return _Plan(
        check,
        tuple((name, kind) for name, kind, repeated in fields if not repeated),
        tuple((name, kind) for name, kind, repeated in fields if repeated),
    )


def _may_hold_checked(descriptor: Descriptor | None, seen: frozenset[str]) -> bool:
    """Whether a field of this type (a message, not a map entry or opaque JSON) can hold a checked type."""
    if descriptor is None or descriptor.GetOptions().map_entry or descriptor.full_name in _OPAQUE:
        return False
    if descriptor.full_name in _CHECKS:
        return True
    if descriptor.full_name in seen:
        return False
    inner = seen | {descriptor.full_name}
    return any(_may_hold_checked(field.message_type, inner) for field in descriptor.fields)


def _page_request(message: Message) -> Problems:
    problems: Problems = []
    if not 0 <= message.page_size <= MAX_PAGE_SIZE:  # type: ignore[attr-defined]
        problems.append(("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0: the default)"))
    if len(message.page_token) > MAX_PAGE_TOKEN:  # type: ignore[attr-defined]
        problems.append(("page_token", "is not a token this service issued"))
    return problems


def _identifier(message: Message) -> Problems:
    problems: Problems = []
    if message.type == 0:  # type: ignore[attr-defined]
        problems.append(("type", "is required"))
    value = message.value  # type: ignore[attr-defined]
    if not value.strip():
        problems.append(("value", "is required"))
    elif len(value) > MAX_IDENTIFIER_VALUE:
        problems.append(("value", f"is longer than {MAX_IDENTIFIER_VALUE} characters"))
    return problems


def _profile_ref(message: Message) -> Problems:
    which = message.WhichOneof("ref")
    if which is None:
        return [("", "needs a profile_id or an identifier")]
    if which == "profile_id" and not message.profile_id.strip():  # type: ignore[attr-defined]
        return [("profile_id", "is empty")]
    return []


def _time_range(message: Message) -> Problems:
    start, end = message.start, message.end  # type: ignore[attr-defined]
    if not (message.HasField("start") and message.HasField("end")):
        return []
    if _in_range(start) and _in_range(end) and start.ToNanoseconds() > end.ToNanoseconds():
        return [("end", "is before start")]
    return []  # a bound out of range is reported by the Timestamp check, once


def _timestamp(message: Message) -> Problems:
    if _in_range(message):
        return []
    return [("", f"must be between {EARLIEST.date()} and {LATEST.date()}")]


def _in_range(moment: Message) -> bool:
    seconds: int = moment.seconds  # type: ignore[attr-defined]
    nanos: int = moment.nanos  # type: ignore[attr-defined]
    return 0 <= nanos < _NANOS and _EARLIEST_SECONDS <= seconds < _LATEST_SECONDS


def _collected_message(message: Message) -> Problems:
    problems: Problems = []
    for name in _timestamp_fields(message.DESCRIPTOR):
        if message.HasField(name):
            moment = getattr(message, name)
            if not (
                0 <= moment.nanos < _NANOS
                and _EARLIEST_REPRESENTABLE <= moment.seconds <= _LATEST_REPRESENTABLE
            ):
                problems.append((name, "is not a valid timestamp (nanos or year out of range)"))
    return problems


@functools.cache
def _timestamp_fields(descriptor: Descriptor) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in descriptor.fields
        if f.message_type is not None and f.message_type.full_name == _TIMESTAMP
    )


_TIMESTAMP = "google.protobuf.Timestamp"
# Free-form JSON (properties, traits, context) holds none of the shared types: not worth walking.
_OPAQUE = frozenset(("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"))

_CHECKS: dict[str, Callable[[Message], Problems]] = {
    "cdp.common.v1.PageRequest": _page_request,
    "cdp.common.v1.Identifier": _identifier,
    "cdp.common.v1.ProfileRef": _profile_ref,
    "cdp.common.v1.TimeRange": _time_range,
    _TIMESTAMP: _timestamp,
    "cdp.common.v1.Message": _collected_message,
}
# Types whose check covers them whole, so the walk does not go inside (a Message's times follow ingest's rules).
_LEAVES = frozenset((_TIMESTAMP, "cdp.common.v1.Message"))
