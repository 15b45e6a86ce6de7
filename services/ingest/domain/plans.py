"""Tracking plans: what a source may send. The collector asks a `PlanCheck` about every message."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from services.ingest.domain.messages import Message


class Verdict(enum.Enum):
    """What to do with a message given its source's plan."""

    ALLOW = "allow"
    FLAG = "flag"
    BLOCK = "block"


@dataclass(frozen=True)
class PlanDecision:
    """The verdict, the violations found (`event.property: reason`), and the message to store."""

    verdict: Verdict
    message: Message
    violations: tuple[str, ...] = field(default=())


class PlanCheck(Protocol):
    """Judges a message against the tracking plan of its source."""

    def check(self, source_id: str, message: Message) -> PlanDecision:
        """The decision for one message (pure CPU: plans are held in memory)."""
        ...


class NoPlans:
    """No tracking plan published: everything is allowed as sent."""

    def check(self, source_id: str, message: Message) -> PlanDecision:
        """Allow the message unchanged."""
        return PlanDecision(Verdict.ALLOW, message)
