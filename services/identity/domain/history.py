"""What a person did, kept per subject and folded into a profile view: traits, first/last seen, counts.

Traits are last-write-wins by event time (the message timestamp), never arrival: a late mobile batch with
older traits does not overwrite newer ones. Ties go to the later arrival.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class History:
    """One subject's share of a profile; `traits` maps key → [event time in µs, value]."""

    traits: dict[str, list[Any]] = field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)

    def record(
        self,
        message_type: str,
        timestamp: datetime,
        source_id: str,
        event_name: str | None,
        traits: Mapping[str, Any],
    ) -> None:
        """Count one message and merge its traits by event time."""
        if self.first_seen is None or timestamp < self.first_seen:
            self.first_seen = timestamp
        if self.last_seen is None or timestamp > self.last_seen:
            self.last_seen = timestamp
        self.counts[message_type] = self.counts.get(message_type, 0) + 1
        if event_name:
            self.events[event_name] = self.events.get(event_name, 0) + 1
        if source_id:
            self.sources[source_id] = self.sources.get(source_id, 0) + 1
        at = micros(timestamp)
        for key, value in traits.items():
            held = self.traits.get(key)
            if held is None or at >= held[0]:
                self.traits[key] = [at, value]


@dataclass(frozen=True)
class View:
    """A profile as GetProfile shows it, folded from its subjects' histories."""

    traits: dict[str, Any]
    first_seen: datetime | None
    last_seen: datetime | None
    counts: dict[str, int]
    events: dict[str, int]
    sources: dict[str, int]


def fold(histories: Iterable[History]) -> View:
    """Merge histories: traits by latest event time, earliest first seen, latest last seen, summed counts."""
    traits: dict[str, list[Any]] = {}
    first: datetime | None = None
    last: datetime | None = None
    counts: dict[str, int] = {}
    events: dict[str, int] = {}
    sources: dict[str, int] = {}
    for history in histories:
        for key, held in history.traits.items():
            # Equal event times on two subjects: the larger value wins, so any fold order agrees.
            if key not in traits or (held[0], repr(held[1])) > (traits[key][0], repr(traits[key][1])):
                traits[key] = held
        if history.first_seen is not None and (first is None or history.first_seen < first):
            first = history.first_seen
        if history.last_seen is not None and (last is None or history.last_seen > last):
            last = history.last_seen
        _add(counts, history.counts)
        _add(events, history.events)
        _add(sources, history.sources)
    plain = {key: held[1] for key, held in sorted(traits.items())}
    return View(plain, first, last, counts, events, sources)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch: an exact, comparable event time."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count
