"""Conversions every part of governance shares: times as the tables keep them, times and actors as the API shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from cdp.common.v1 import audit_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACTOR_KINDS = {
    "admin": audit_pb2.ACTOR_KIND_OPERATOR,
    "source": audit_pb2.ACTOR_KIND_SERVICE,
    "service": audit_pb2.ACTOR_KIND_SERVICE,
    "system": audit_pb2.ACTOR_KIND_SYSTEM,
}


def micros(moment: datetime) -> int:
    """µs since the epoch (the tables' time columns), exactly (no float on the way)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The datetime of µs since the epoch."""
    return _EPOCH + timedelta(microseconds=value)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a protobuf Timestamp, to the microsecond."""
    seconds, rest = divmod(micros(moment), 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1_000)


def actor_message(actor: str) -> audit_pb2.Actor:
    """An event's actor (`admin`, `source:web`, `service:governance`) as the API's Actor."""
    kind, _, ident = actor.partition(":")
    return audit_pb2.Actor(kind=_ACTOR_KINDS.get(kind, audit_pb2.ACTOR_KIND_UNSPECIFIED), id=ident or kind)
