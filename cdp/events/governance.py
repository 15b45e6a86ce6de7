"""Events the governance service appends (and, for consent stated in messages, ingest on its behalf).

Consent: governance owns consent state (its read model answers every question about it). A decision enters the
log as `ConsentChanged` in `consent-<subject id>`: governance appends it for SetConsent, and ingest appends it
in the same commit as the message whose `context.consent` stated it (source `message`), so no reader ever sees
a message before the consent it carried.

Data subject requests live in `dsr-<request id>`, a stream that names the person only by pseudonymous ids
(subject ids, profile ids) and outlives the erasure it records: it is the proof. Suppressions live there too,
so erasing a person's own streams never lifts their suppression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cdp.events.envelope import DomainEvent, JsonObject


@dataclass(frozen=True, kw_only=True)
class ConsentChanged(DomainEvent, type_name="ConsentChanged"):
    """Consent by purpose (e.g. {"analytics": true, "advertising": false}); stream `consent-<subject_id>`.

    Purposes not listed keep their state. The actor is in the event's metadata (`admin`, `source:<id>`).
    """

    subject_id: str
    purposes: Mapping[str, bool]
    source_id: str | None = None
    """The ingest source whose message stated it (source `message`); None for SetConsent."""
    source: str = ""
    """Where the decision came from: `message`, `api`, `cmp:<tool>`; empty in events written before it existed
    (read as `message` when `source_id` is set, else `api`)."""
    policy_version: str = ""
    """The version of the privacy policy or consent text the subject answered."""
    jurisdiction: str = ""
    """The regime the decision was made under (`eu`, `us-ca`…); empty: the installation's default."""
    effective_at: datetime | None = None
    """When the subject decided (None: when it was recorded)."""
    cause_message_id: str = ""
    """The collected message (its messageId) whose `context.consent` stated it, if any."""


@dataclass(frozen=True, kw_only=True)
class SubjectSuppressed(DomainEvent, type_name="SubjectSuppressed"):
    """Ingest drops (and counts) every new message of these subjects until unsuppressed; `dsr-<request_id>`."""

    subject_id: str = ""
    """One subject (events written before `subject_ids` existed)."""
    reason: str
    """Why (`suppression request`, `erasure request`…), free of personal data."""
    request_id: str = ""
    subject_ids: tuple[str, ...] = ()
    profile_id: str = ""
    external_reference: str = ""
    requested_at: datetime | None = None

    def subjects(self) -> tuple[str, ...]:
        """Every suppressed subject (old events name one in `subject_id`)."""
        return self.subject_ids or ((self.subject_id,) if self.subject_id else ())


@dataclass(frozen=True, kw_only=True)
class SubjectUnsuppressed(DomainEvent, type_name="SubjectUnsuppressed"):
    """The suppression of these subjects is lifted; `dsr-<request_id>`."""

    subject_id: str = ""
    reason: str
    request_id: str = ""
    subject_ids: tuple[str, ...] = ()
    profile_id: str = ""
    external_reference: str = ""
    requested_at: datetime | None = None

    def subjects(self) -> tuple[str, ...]:
        """Every subject whose suppression is lifted."""
        return self.subject_ids or ((self.subject_id,) if self.subject_id else ())


@dataclass(frozen=True, kw_only=True)
class AccessRequested(DomainEvent, type_name="AccessRequested"):
    """A data subject asked for their data; stream `dsr-<request_id>`."""

    request_id: str
    subject_id: str = ""
    """The subject the request was made by (the first of `subject_ids`)."""
    subject_ids: tuple[str, ...] = ()
    """Every identifier of the person (as subject ids) when the request was received."""
    identifier_types: tuple[str, ...] = ()
    """The type of each of `subject_ids` (parallel)."""
    profile_id: str = ""
    profile_ids: tuple[str, ...] = ()
    """The live profile and every profile merged into it."""
    regulation: str = "gdpr"
    requested_at: datetime | None = None
    due_at: datetime | None = None
    external_reference: str = ""


@dataclass(frozen=True, kw_only=True)
class AccessCompleted(DomainEvent, type_name="AccessCompleted"):
    """The export of an access request, sealed with the data key of `sealed_for` (erasure shreds it too)."""

    request_id: str
    sealed_for: str
    export: str
    """Ciphertext (keyring `encrypt_value`, context "AccessCompleted#export") of the JSON export."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """What the export holds (messages, identifiers, consent changes, memberships), free of personal data."""
    completed_at: datetime


@dataclass(frozen=True, kw_only=True)
class ErasureRequested(DomainEvent, type_name="ErasureRequested"):
    """A data subject asked to be forgotten; `subject_ids` are every identifier of the person."""

    request_id: str
    subject_ids: tuple[str, ...]
    identifier_types: tuple[str, ...] = ()
    """The type of each of `subject_ids` (parallel)."""
    profile_id: str = ""
    profile_ids: tuple[str, ...] = ()
    """The live profile and every profile merged into it: their streams are deleted too."""
    suppress: bool = False
    regulation: str = "gdpr"
    requested_at: datetime | None = None
    due_at: datetime | None = None
    external_reference: str = ""


@dataclass(frozen=True, kw_only=True)
class RequestStepCompleted(DomainEvent, type_name="RequestStepCompleted"):
    """One step of carrying out a request (`keys_destroyed`, `announced`, `purged:identity`, `log_erased`…)."""

    request_id: str
    step: str
    detail: str = ""
    """Free of personal data."""
    counts: Mapping[str, int] = field(default_factory=dict)
    completed_at: datetime


@dataclass(frozen=True, kw_only=True)
class RequestStepFailed(DomainEvent, type_name="RequestStepFailed"):
    """A step failed; it is retried (the request stays in progress), and this keeps the error visible."""

    request_id: str
    step: str
    error: str
    attempt: int
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubjectErased(DomainEvent, type_name="SubjectErased"):
    """The subject's keys were shredded; every service evicts and purges it and confirms with `ReadModelPurged`."""

    request_id: str
    subject_id: str
    profile_ids: tuple[str, ...] = ()
    """The person's profiles (the same in every `SubjectErased` of one request)."""


@dataclass(frozen=True, kw_only=True)
class ReadModelPurged(DomainEvent, type_name="ReadModelPurged"):
    """A service forgot erased subjects in its read models and caches, and scrubbed its files; `dsr-<request_id>`.

    Appended by each service that holds data about people (ingest, identity, segments, activation) once the
    transaction that purged them committed and its database files were scrubbed (SQLite WAL checkpointed and
    truncated, PostgreSQL tables vacuumed). The erasure completes when every expected service confirmed.
    """

    request_id: str
    service: str
    subject_id: str
    """The subject of the `SubjectErased` this confirms (one confirmation per announcement and service)."""
    rows_deleted: int = 0
    purged_at: datetime


@dataclass(frozen=True, kw_only=True)
class ErasureCompleted(DomainEvent, type_name="ErasureCompleted"):
    """The receipt: what was shredded and deleted, counts, start and end, whether the deadline was met."""

    request_id: str
    receipt: JsonObject
    started_at: datetime
    completed_at: datetime
    deadline_met: bool


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
