"""Instants as integer microseconds since the epoch: exact, and the same arithmetic in Python and in SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000
DAY = 86_400 * SECOND


def micros(moment: datetime) -> int:
    """µs since the epoch of an aware datetime."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds


def moment(at: int) -> datetime:
    """The aware UTC datetime of µs since the epoch."""
    return EPOCH + timedelta(microseconds=at)
