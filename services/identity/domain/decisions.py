"""Identity decisions: what the decider concluded about one message, or what an operator split off."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

NEW_IDENTIFIER = "new_identifier"
SHARED_MESSAGE = "shared_message"
ALIAS = "alias"
MERGE_PROTECTION = "merge_protection"
MAX_MERGES = "max_merges"
PREVENTED_RELINK = "prevented_relink"
VALUE_LIMIT = "value_limit"
"""Refusals name the type after a colon: `value_limit:email`."""


@dataclass(frozen=True, slots=True)
class Linked:
    """`subject` (of `type`) now belongs to `profile`; `creates` when it is the profile's first identifier."""

    decision_id: str
    profile: str
    type: str
    subject: str
    rule: str
    creates: bool
    seen_at: datetime | None
    cause: str


@dataclass(frozen=True, slots=True)
class Merged:
    """Profile `merged` was folded into `profile`."""

    decision_id: str
    profile: str
    merged: str
    rule: str
    cause: str
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """`subject` was not linked to `profile` (nor `other` merged into it) because of `rule`."""

    decision_id: str
    profile: str
    other: str
    rule: str
    type: str
    subject: str
    cause: str
    at: datetime | None = None
    cause_position: int | None = None
    """Where the refused message is in the log (None: unknown), so a split can re-decide it."""


@dataclass(frozen=True, slots=True)
class Split:
    """`subjects` moved from `profile` to `new_profile` (a revived merged profile when `undone` is a merge)."""

    decision_id: str
    profile: str
    new_profile: str
    subjects: tuple[str, ...]
    reason: str
    prevent_relink: bool
    undone: str
    at: datetime | None = None
    automatic: bool = False
    """Made by the rebuild that follows an operator's split (a profile it leaves empty redirects onward)."""


Decision = Linked | Merged | Rejected | Split


def decided_at(decision: Decision) -> datetime | None:
    """When the decision took effect (the causing message's event time; the split time for splits)."""
    return decision.seen_at if isinstance(decision, Linked) else decision.at
