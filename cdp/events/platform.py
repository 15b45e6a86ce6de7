"""Events the shared platform appends on behalf of every service (the reactor's own bookkeeping)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cdp.events.envelope import DomainEvent


@dataclass(frozen=True, kw_only=True)
class EventParked(DomainEvent, type_name="EventParked"):
    """A reactor retried an event until it gave up, and moved past it; stream `parked-<reactor>`.

    The parked event stays in the log untouched; this records that `reactor` did not react to it and why, so
    the gap is visible (its status counts parked events) and can be replayed once the cause is fixed.
    """

    reactor: str
    event_id: str
    global_position: int
    event_type: str
    stream: str
    error_type: str
    """The exception's class name."""
    error: str
    """The exception's message, cut to 500 characters (our errors name fields and ids, never personal values)."""
    attempts: int
    parked_at: datetime
