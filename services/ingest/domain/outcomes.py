"""What happened to each collected message, as the edges report it back to the sender."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cdp.errors import FieldViolation

if TYPE_CHECKING:
    from services.ingest.domain.plans import PlanViolation


class Status(enum.Enum):
    """The fate of one message."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Reason(enum.Enum):
    """Why a message was rejected (names match the contract's RejectionReason)."""

    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    MESSAGE_TOO_LARGE = "message_too_large"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    TRACKING_PLAN_BLOCKED = "tracking_plan_blocked"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True)
class Outcome:
    """One message's result: accepted (stored now), duplicate (stored before), or rejected with the reasons."""

    index: int
    message_id: str | None
    status: Status
    received_at: datetime
    reason: Reason | None = None
    violations: tuple[FieldViolation, ...] = ()
    plan_violations: tuple[PlanViolation, ...] = ()
