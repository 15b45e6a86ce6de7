"""Events the segments service appends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cdp.events.envelope import DomainEvent, JsonObject


@dataclass(frozen=True, kw_only=True)
class AudienceDefined(DomainEvent, type_name="AudienceDefined"):
    """An audience and its rule tree (defined or redefined); stream `audience-<audience_id>`."""

    audience_id: str
    name: str
    definition: JsonObject
    """The condition tree (`services.segments.domain.codec`), band bounds resolved."""
    description: str = ""
    expression: str = ""
    """The definition in the audience language, as written (or rendered from a tree)."""
    defined_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class AudienceArchived(DomainEvent, type_name="AudienceArchived"):
    """The audience stops being computed and activated."""

    audience_id: str
    reason: str = ""
    archived_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ComputedTraitDefined(DomainEvent, type_name="ComputedTraitDefined"):
    """A computed trait (e.g. count of an event over a window); stream `trait-<trait_id>`."""

    trait_id: str
    name: str
    definition: JsonObject
    """The aggregate (`services.segments.domain.codec`)."""
    description: str = ""
    expression: str = ""
    defined_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class MembershipChanged(DomainEvent, type_name="MembershipChanged"):
    """A profile entered (`entered`) or left an audience; stream `membership-<profile_id>`."""

    audience_id: str
    profile_id: str
    entered: bool
    computed_at: datetime
    """The evaluation time the change was decided at."""
    reason: str = ""
    """`event`, `time` (a window passed), `merge`, `split`, `definition`, `archived`, `consent`."""
    changed: tuple[str, ...] = ()
    """The top-level conditions (audience language) whose truth changed with it."""
    audience_version: int = 0
    change_number: int = 0
    """1 for the pair's first change, and so on: what the event's id is derived from."""
