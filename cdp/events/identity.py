"""Events the identity service appends; profiles are opaque ids, identifiers appear only as subject ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cdp.events.envelope import DomainEvent


@dataclass(frozen=True, kw_only=True)
class IdentityRulesSet(DomainEvent, type_name="IdentityRulesSet"):
    """Identifier types by merge priority and per-profile limits (e.g. {"email": 5}); `config-identity`."""

    priority: tuple[str, ...]
    limits: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class IdentifierLinked(DomainEvent, type_name="IdentifierLinked"):
    """An identifier (as its subject id) now belongs to a profile; stream `profile-<profile_id>`."""

    profile_id: str
    identifier_type: str
    subject_id: str
    causing_message_id: str


@dataclass(frozen=True, kw_only=True)
class ProfilesMerged(DomainEvent, type_name="ProfilesMerged"):
    """`merged_profile_id` was folded into `profile_id` by `rule`, prompted by a message."""

    profile_id: str
    merged_profile_id: str
    rule: str
    causing_message_id: str


@dataclass(frozen=True, kw_only=True)
class MergeRejected(DomainEvent, type_name="MergeRejected"):
    """A merge the message suggested was refused by `rule` (e.g. a limit would be exceeded)."""

    profile_id: str
    other_profile_id: str
    rule: str
    causing_message_id: str


@dataclass(frozen=True, kw_only=True)
class ProfileSplit(DomainEvent, type_name="ProfileSplit"):
    """Identifiers (subject ids) moved out of `profile_id` into `new_profile_id`."""

    profile_id: str
    new_profile_id: str
    subject_ids: tuple[str, ...]
    reason: str
