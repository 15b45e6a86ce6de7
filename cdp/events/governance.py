"""Events the governance service appends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cdp.events.envelope import DomainEvent


@dataclass(frozen=True, kw_only=True)
class ConsentChanged(DomainEvent, type_name="ConsentChanged"):
    """Consent by purpose (e.g. {"analytics": true, "advertising": false}); stream `consent-<subject_id>`."""

    subject_id: str
    purposes: Mapping[str, bool]
    source_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class SubjectSuppressed(DomainEvent, type_name="SubjectSuppressed"):
    """Ingest drops and activation skips this subject until unsuppressed; `consent-<subject_id>`."""

    subject_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class SubjectUnsuppressed(DomainEvent, type_name="SubjectUnsuppressed"):
    """The suppression is lifted."""

    subject_id: str


@dataclass(frozen=True, kw_only=True)
class AccessRequested(DomainEvent, type_name="AccessRequested"):
    """A data subject asked for their data; stream `dsr-<request_id>`."""

    request_id: str
    subject_id: str


@dataclass(frozen=True, kw_only=True)
class ErasureRequested(DomainEvent, type_name="ErasureRequested"):
    """A data subject asked to be forgotten; `subject_ids` are every identifier of the person."""

    request_id: str
    subject_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SubjectErased(DomainEvent, type_name="SubjectErased"):
    """The subject's keys were shredded and its streams deleted; every service evicts and purges it."""

    request_id: str
    subject_id: str


@dataclass(frozen=True, kw_only=True)
class RetentionPolicySet(DomainEvent, type_name="RetentionPolicySet"):
    """Events of a stream category older than `max_age_days` are removed; `retention-<policy_id>`."""

    policy_id: str
    category: str
    max_age_days: int


@dataclass(frozen=True, kw_only=True)
class RetentionRunCompleted(DomainEvent, type_name="RetentionRunCompleted"):
    """A retention run finished: how many streams it truncated and events it removed."""

    run_id: str
    policy_id: str
    streams_truncated: int
    events_removed: int
    completed_at: datetime
