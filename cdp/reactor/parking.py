"""Parked events: a reactor's record that it gave up on an event, in `parked-<reactor>`, one per event."""

from __future__ import annotations

from datetime import UTC, datetime

from cdp.eventlog.port import EventStore, NewEvent, RecordedEvent, StreamDeleted
from cdp.events import EventMetadata
from cdp.events.platform import EventParked
from cdp.faults import failure_fields
from cdp.reactor.policy import derived_id

ERROR_LENGTH = 500


def parked_event(reactor: str, event: RecordedEvent, error: BaseException, attempts: int) -> NewEvent:
    """The `EventParked` for an event; its id derives from the event, so parking it twice appends it once."""
    parked = EventParked(
        reactor=reactor,
        event_id=str(event.id),
        global_position=event.global_position,
        event_type=event.type,
        stream=event.stream,
        error_type=type(error).__name__,
        error=failure_fields(error)["cause"][:ERROR_LENGTH],
        attempts=attempts,
        parked_at=datetime.now(UTC),
    )
    return parked.to_new_event(
        EventMetadata.caused_by(event, "system"), id=derived_id(event.id, "parked", reactor)
    )


async def count_parked(store: EventStore, stream: str) -> int:
    """How many events a reactor parked: its stream's length."""
    try:
        last = await store.read_stream(stream, backwards=True, limit=1)
    except StreamDeleted:
        return 0
    return last[0].stream_position + 1 if last else 0
