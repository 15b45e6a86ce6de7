"""A small real projection for the runner's tests: how many events of each type the log holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session

from cdp.eventlog.port import ALL, EventFilter, NewEvent, RecordedEvent
from cdp.sqlengine import read_only

metadata = MetaData()
counts = Table(
    "event_type_counts",
    metadata,
    Column("event_type", String(100), primary_key=True),
    Column("count", Integer, nullable=False),
)


class SimulatedCrash(BaseException):
    """The process dies here: no `except Exception` in the runner catches it."""


class EventTypeCounts:
    """Counts events per type; `fail_at` fails on that global position every time (a bug or a poison event),
    `crash_at` kills the process there (once)."""

    name = "event_type_counts"
    metadata = metadata

    def __init__(
        self,
        filter: EventFilter = ALL,
        *,
        fail_at: int | None = None,
        crash_at: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.filter = filter
        self.fail_at = fail_at
        self.crash_at = crash_at
        self.delay = delay
        self.batches: list[int] = []
        self.entered = threading.Event()

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Add one per event to its type's row."""
        self.entered.set()
        for event in events:
            if event.global_position == self.fail_at:
                raise RuntimeError(f"cannot count the event at {event.global_position}")
            if event.global_position == self.crash_at:
                raise SimulatedCrash(f"simulated crash at {event.global_position}")
            current = session.scalar(select(counts.c.count).where(counts.c.event_type == event.type))
            if current is None:
                session.execute(counts.insert().values(event_type=event.type, count=1))
            else:
                session.execute(
                    counts.update().where(counts.c.event_type == event.type).values(count=current + 1)
                )
        if self.delay:
            threading.Event().wait(self.delay)
        self.batches.append(len(events))


def read_counts(engine: Engine) -> dict[str, int]:
    """The read model's content."""
    with read_only(engine).connect() as conn:
        return {str(type_): int(n) for type_, n in conn.execute(select(counts.c.event_type, counts.c.count))}


def events(n: int, types: Sequence[str] = ("Viewed", "Clicked", "Bought")) -> list[NewEvent]:
    """`n` events cycling through `types`."""
    return [NewEvent(type=types[i % len(types)], data=b"{}") for i in range(n)]
