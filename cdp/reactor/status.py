"""A reactor's state as health checks and operators see it, and how it retries."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class State(enum.Enum):
    """What a reactor is doing."""

    IDLE = "idle"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    RETRYING = "retrying"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    Transient faults (an outage) are retried for as long as they last (`max_attempts=None`); an event that fails
    otherwise is tried `park_after` times in all, then parked. More than `park_limit` parked in a row means the
    fault is not the events' (a dropped table, a bug in the policy): the reactor fails instead, visibly.
    """

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    max_attempts: int | None = None
    park_after: int = 3
    park_limit: int = 10

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry number `attempt` (1-based): full backoff halved at random, so peers spread."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class ReactorStatus:
    """What `make status`, the ops gRPC call and the periodic log line show about one reactor."""

    name: str
    state: str
    position: int
    """The checkpoint: the last event reacted to."""
    head: int
    """The newest event in the log, as last seen."""
    lag: int
    """Events between the checkpoint and the head that the reactor still has to look at."""
    events_per_second: float
    retries: int
    """Failed attempts since the last successful batch."""
    parked: int
    """Events this reactor gave up on (`EventParked` in `parked-<name>`)."""
    last_error: str | None
