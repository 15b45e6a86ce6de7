"""Events the identity service appends; profiles are opaque ids, identifiers appear only as subject ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from cdp.events.envelope import DomainEvent, JsonObject


@dataclass(frozen=True, kw_only=True)
class IdentityRulesSet(DomainEvent, type_name="IdentityRulesSet"):
    """Identifier types by merge priority and per-profile limits (e.g. {"email": 5}); `config-identity`."""

    priority: tuple[str, ...]
    limits: Mapping[str, int]
    rules: JsonObject = field(default_factory=dict)
    """The whole rule set (per type: value_limit, limit_window_seconds, blocked_values, blocked_patterns)."""
    max_merges: int | None = None
    """At most this many profiles merged into one; None: unlimited."""


@dataclass(frozen=True, kw_only=True)
class IdentifierLinked(DomainEvent, type_name="IdentifierLinked"):
    """An identifier (as its subject id) now belongs to a profile; stream `profile-<profile_id>`."""

    profile_id: str
    identifier_type: str
    subject_id: str
    causing_message_id: str
    rule: str = "new_identifier"
    """Why: `new_identifier`, `shared_message` (seen together with the profile's identifiers) or `alias`."""
    creates_profile: bool = False
    """True for the first identifier of a new profile."""
    seen_at: datetime | None = None
    """Event time of the causing message (what value-limit windows count from)."""


@dataclass(frozen=True, kw_only=True)
class ProfilesMerged(DomainEvent, type_name="ProfilesMerged"):
    """`merged_profile_id` was folded into `profile_id` by `rule`, prompted by a message."""

    profile_id: str
    merged_profile_id: str
    rule: str
    causing_message_id: str
    decided_at: datetime | None = None
    """Event time of the causing message."""


@dataclass(frozen=True, kw_only=True)
class MergeRejected(DomainEvent, type_name="MergeRejected"):
    """A merge the message suggested was refused by `rule` (e.g. a limit would be exceeded)."""

    profile_id: str
    other_profile_id: str
    rule: str
    causing_message_id: str
    identifier_type: str = ""
    """The type of the identifier the message could not link (dropped by the rule)."""
    subject_id: str = ""
    """The subject id of that identifier."""
    decided_at: datetime | None = None
    """Event time of the causing message."""
    causing_message_position: int | None = None
    """Global position of the causing message in the log (None: unknown, e.g. recorded before it was kept), so a split can re-decide it."""


@dataclass(frozen=True, kw_only=True)
class ProfileSplit(DomainEvent, type_name="ProfileSplit"):
    """Identifiers (subject ids) moved out of `profile_id` into `new_profile_id`."""

    profile_id: str
    new_profile_id: str
    subject_ids: tuple[str, ...]
    reason: str
    prevent_relink: bool = False
    """The two profiles must not be merged again automatically."""
    undone_decision_id: str = ""
    """The LINK or MERGE decision this split undid; empty when an identifier was split off."""
    decided_at: datetime | None = None
    """When the operator's split was applied."""
    automatic: bool = False
    """Made by the rebuild that follows an operator's split (a profile it leaves empty redirects onward)."""


class Attribution(NamedTuple):
    """One message of a `MessagesAttributed` batch."""

    position: int
    """The message's global position in the log."""
    event_id: str
    """The `MessageCollected` event's id."""
    subject_id: str
    """The message's attribution subject: its highest-priority usable identifier (its history's owner)."""
    profile_id: str
    """The live profile holding that subject once the batch's decisions applied; "" when it holds none."""


@dataclass(frozen=True, kw_only=True)
class MessagesAttributed(DomainEvent, type_name="MessagesAttributed"):
    """The profile stream: where the messages identity resolved in one batch landed; `attribution-identity`.

    Identity appends one per resolved batch, after that batch's decision events, covering the messages it
    processed with `after_position < position <= through_position` (messages it could not attribute: shredded,
    or without a usable identifier, are left out). A message belongs, from then on, to whatever profile its
    subject belongs to: follow `ProfilesMerged` (the merged profile's messages join the survivor),
    `ProfileSplit` (its `subject_ids` move to `new_profile_id`) and `IdentifierLinked` (a subject that had no
    profile gets one). See docs/events.md.
    """

    after_position: int
    through_position: int
    positions: tuple[int, ...]
    event_ids: tuple[str, ...]
    subject_ids: tuple[str, ...]
    profile_ids: tuple[str, ...]
    """Parallel tuples, one entry per attributed message, in log order (read them with `entries()`)."""

    def entries(self) -> list[Attribution]:
        """One `Attribution` per message, in log order."""
        return [
            Attribution(*entry)
            for entry in zip(self.positions, self.event_ids, self.subject_ids, self.profile_ids, strict=True)
        ]
