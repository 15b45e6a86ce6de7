"""Consent by purpose: a person's decisions folded into the state in force at a moment, with defaults.

A person has several identifiers, hence several subjects, and a decision is recorded for one of them. The
state of a purpose for the person is the decision with the latest effective time among all their subjects
(ties: the one recorded last). A purpose nobody decided takes its jurisdiction's default: an opt-in regime
(GDPR, LGPD) denies it until it is granted, an opt-out regime (CCPA) grants it until it is denied.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime


class Regime(enum.Enum):
    """How a jurisdiction treats a purpose nobody decided."""

    OPT_IN = "opt_in"
    """Denied until granted."""
    OPT_OUT = "opt_out"
    """Granted until denied."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded decision for one purpose of one subject."""

    subject_id: str
    purpose: str
    granted: bool
    effective_at: datetime
    position: int
    """The log's global position of the event that recorded it (orders decisions effective at once)."""
    source: str = ""
    policy_version: str = ""
    jurisdiction: str = ""


@dataclass(frozen=True, slots=True)
class PurposeState:
    """The state of one purpose for a person: a decision, or the jurisdiction's default (`decision` None)."""

    purpose: str
    granted: bool
    decision: Decision | None = None

    @property
    def is_default(self) -> bool:
        """No decision is in force: `granted` is the regime's default."""
        return self.decision is None


@dataclass(frozen=True)
class ConsentState:
    """A person's consent at a moment: every purpose's state, ordered by purpose."""

    purposes: tuple[PurposeState, ...]
    jurisdiction: str
    """The jurisdiction whose defaults fill the purposes without a decision."""

    def granted(self, purpose: str) -> bool | None:
        """The state of one purpose (None when it is neither configured nor decided)."""
        return next((p.granted for p in self.purposes if p.purpose == purpose), None)


@dataclass(frozen=True)
class ConsentDefaults:
    """The configured purposes and the regime of each jurisdiction."""

    purposes: tuple[str, ...]
    regimes: Mapping[str, Regime]
    default_jurisdiction: str

    def __post_init__(self) -> None:
        if self.default_jurisdiction not in self.regimes:
            raise ValueError(f"the default jurisdiction {self.default_jurisdiction!r} has no regime")

    @classmethod
    def parse(cls, purposes: Iterable[str], regimes: Mapping[str, str], default: str) -> ConsentDefaults:
        """From settings' text (`{"eu": "opt_in"}`); ValueError for an unknown regime."""
        return cls(tuple(purposes), {j: Regime(r) for j, r in regimes.items()}, default)

    def knows(self, jurisdiction: str) -> bool:
        """Whether a jurisdiction has a configured regime."""
        return jurisdiction in self.regimes

    def regime(self, jurisdiction: str) -> Regime:
        """The regime of a jurisdiction; the default jurisdiction's for an empty or unknown one."""
        return (
            self.regimes.get(jurisdiction or self.default_jurisdiction)
            or self.regimes[self.default_jurisdiction]
        )


def in_force(decisions: Iterable[Decision], as_of: datetime) -> dict[str, Decision]:
    """Per purpose, the decision in force at `as_of`: the latest effective by then, over every subject given."""
    current: dict[str, Decision] = {}
    for decision in decisions:
        if decision.effective_at > as_of:
            continue
        held = current.get(decision.purpose)
        if held is None or _order(decision) > _order(held):
            current[decision.purpose] = decision
    return current


def consent_at(
    decisions: Iterable[Decision], as_of: datetime, defaults: ConsentDefaults, jurisdiction: str = ""
) -> ConsentState:
    """The person's consent at `as_of`: decisions where made, the jurisdiction's defaults elsewhere.

    The jurisdiction is the one asked for, else that of the person's latest decision in force, else the
    installation's default.
    """
    current = in_force(decisions, as_of)
    chosen = jurisdiction or _latest_jurisdiction(current.values()) or defaults.default_jurisdiction
    default_grant = defaults.regime(chosen) is Regime.OPT_OUT
    states = {p: PurposeState(p, default_grant) for p in defaults.purposes}
    states.update({p: PurposeState(p, d.granted, d) for p, d in current.items()})
    return ConsentState(tuple(states[p] for p in sorted(states)), chosen)


def _latest_jurisdiction(decisions: Iterable[Decision]) -> str:
    latest = max((d for d in decisions if d.jurisdiction), key=_order, default=None)
    return latest.jurisdiction if latest is not None else ""


def _order(decision: Decision) -> tuple[datetime, int]:
    return decision.effective_at, decision.position
