"""Tracking plans: what a source may send. The collector asks a `PlanCheck` about every message."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from services.ingest.domain.messages import Message


class ViolationReason(enum.Enum):
    """Why a message does not fit its plan (names match the contract's ViolationReason)."""

    UNPLANNED_EVENT = "unplanned_event"
    UNPLANNED_PROPERTY = "unplanned_property"
    MISSING_REQUIRED = "missing_required"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    COMMON_SCHEMA = "common_schema"


@dataclass(frozen=True)
class PlanViolation:
    """One way a message breaks its plan; `field` is a path like `properties.price` (never a value)."""

    reason: ViolationReason
    field: str = ""
    description: str = ""

    def encode(self) -> str:
        """How the violation is kept with a flagged event: `reason:field` (no values, so no personal data)."""
        return f"{self.reason.value}:{self.field}"


class Verdict(enum.Enum):
    """What to do with a message given its source's plan."""

    ALLOW = "allow"
    FLAG = "flag"
    BLOCK = "block"


@dataclass(frozen=True)
class PlanDecision:
    """The verdict, the violations found, and the message to store (unplanned properties maybe omitted)."""

    verdict: Verdict
    message: Message
    violations: tuple[PlanViolation, ...] = field(default=())


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
