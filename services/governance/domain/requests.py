"""Data subject requests as a fold of their stream: kind, state, steps, deadline, and what an erasure removes.

Pure: the events of one `dsr-<request id>` stream in, the request's state out; no I/O. The stream is the
whole truth about a request, so the worker that carries requests out reads it before every step and a crash at
any point resumes where the stream says it stopped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdp.events import streams
from cdp.events.envelope import DomainEvent
from cdp.events.governance import (
    AccessCompleted,
    AccessRequested,
    ErasureCompleted,
    ErasureRequested,
    ReadModelPurged,
    RequestStepCompleted,
    RequestStepFailed,
    SubjectSuppressed,
    SubjectUnsuppressed,
)
from cdp.events.identity import MessagesAttributed

DEADLINES = {"gdpr": timedelta(days=30), "ccpa": timedelta(days=45)}
"""How long the law gives to answer (GDPR art. 12(3): one month; CCPA §1798.130: 45 days)."""
DEFAULT_REGULATION = "gdpr"


class Kind(enum.Enum):
    """What the subject asked for."""

    ACCESS = "access"
    ERASURE = "erasure"
    SUPPRESSION = "suppression"
    UNSUPPRESSION = "unsuppression"


class State(enum.Enum):
    """How far a request is."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


# The steps of an erasure, in order. `purged:<service>` steps come between `announced` and `log_scanned`.
SUPPRESSED = "suppressed"
KEYS_DESTROYED = "keys_destroyed"
ANNOUNCED = "announced"
LOG_SCANNED = "log_scanned"
LOG_ERASED = "log_erased"
STARTED = "started"
"""An access request's first step: it is being carried out."""


def purged_step(service: str) -> str:
    """`purged:identity`: the service confirmed it forgot every subject of the request."""
    return f"purged:{service}"


def due_at(requested_at: datetime, regulation: str) -> datetime:
    """The legal deadline of a request received at `requested_at` under `regulation`."""
    return requested_at + DEADLINES[regulation]


@dataclass(frozen=True)
class Step:
    """One step carried out (or failing) so far."""

    name: str
    completed_at: datetime | None
    detail: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)
    error: str = ""
    attempts: int = 0


@dataclass
class Request:
    """A data subject request as its stream tells it."""

    request_id: str
    kind: Kind
    subject_ids: tuple[str, ...]
    identifier_types: tuple[str, ...]
    profile_id: str
    profile_ids: tuple[str, ...]
    regulation: str
    requested_at: datetime
    due_at: datetime
    external_reference: str
    actor: str
    suppress: bool = False
    state: State = State.PENDING
    steps: dict[str, Step] = field(default_factory=dict)
    completed_at: datetime | None = None
    started_at: datetime | None = None
    receipt: Mapping[str, Any] = field(default_factory=dict)
    export_counts: Mapping[str, int] = field(default_factory=dict)
    confirmations: dict[str, set[str]] = field(default_factory=dict)
    """Service → the subjects it confirmed purging (`ReadModelPurged`)."""
    rows_purged: dict[str, int] = field(default_factory=dict)
    """Service → the read-model rows its confirmations say it deleted."""

    def done(self, step: str) -> bool:
        """Whether the step completed."""
        found = self.steps.get(step)
        return found is not None and found.completed_at is not None

    def purged_by(self, service: str) -> bool:
        """Whether the service confirmed every subject of the request."""
        return set(self.subject_ids) <= self.confirmations.get(service, set())

    def overdue(self, now: datetime) -> bool:
        """Open past its deadline, or completed after it."""
        end = self.completed_at or now
        return end > self.due_at

    @property
    def person_streams(self) -> tuple[str, ...]:
        """The streams that are the person's alone: deleted whole by an erasure."""
        return person_streams(self.subject_ids, self.profile_ids)


def fold(recorded: Iterable[tuple[DomainEvent, str, datetime]]) -> Request | None:
    """The request from its stream's events `(event, actor, recorded_at)` in order; None if it has none."""
    request: Request | None = None
    for event, actor, recorded_at in recorded:
        request = advance(request, event, actor, recorded_at)
    return request


def advance(request: Request | None, event: DomainEvent, actor: str, recorded_at: datetime) -> Request | None:
    """The request after one more event of its stream (events that do not change it are ignored)."""
    if request is None:
        return _opened(event, actor, recorded_at)
    if isinstance(event, RequestStepCompleted):
        request.steps[event.step] = Step(event.step, event.completed_at, event.detail, dict(event.counts))
        request.started_at = request.started_at or recorded_at
        if request.state is State.PENDING:
            request.state = State.IN_PROGRESS
    elif isinstance(event, RequestStepFailed):
        before = request.steps.get(event.step)
        if before is None or before.completed_at is None:
            request.steps[event.step] = Step(event.step, None, error=event.error, attempts=event.attempt)
        request.started_at = request.started_at or recorded_at
        if request.state is State.PENDING:
            request.state = State.IN_PROGRESS
    elif isinstance(event, ReadModelPurged):
        request.confirmations.setdefault(event.service, set()).add(event.subject_id)
        request.rows_purged[event.service] = request.rows_purged.get(event.service, 0) + event.rows_deleted
    elif isinstance(event, ErasureCompleted):
        request.state, request.completed_at = State.COMPLETED, event.completed_at
        request.receipt = dict(event.receipt)
    elif isinstance(event, AccessCompleted):
        request.state, request.completed_at = State.COMPLETED, event.completed_at
        request.export_counts = dict(event.counts)
    return request


def _opened(event: DomainEvent, actor: str, recorded_at: datetime) -> Request | None:
    """The request its first event opens (None: not a request's first event)."""
    if isinstance(event, AccessRequested | ErasureRequested):
        requested = event.requested_at or recorded_at
        regulation = event.regulation or DEFAULT_REGULATION
        subjects = event.subject_ids or ((event.subject_id,) if isinstance(event, AccessRequested) else ())
        return Request(
            request_id=event.request_id,
            kind=Kind.ACCESS if isinstance(event, AccessRequested) else Kind.ERASURE,
            subject_ids=tuple(subjects),
            identifier_types=tuple(event.identifier_types),
            profile_id=event.profile_id,
            profile_ids=tuple(event.profile_ids),
            regulation=regulation,
            requested_at=requested,
            due_at=event.due_at or due_at(requested, regulation),
            external_reference=event.external_reference,
            actor=actor,
            suppress=isinstance(event, ErasureRequested) and event.suppress,
        )
    if isinstance(event, SubjectSuppressed | SubjectUnsuppressed):
        requested = event.requested_at or recorded_at
        return Request(
            request_id=event.request_id,
            kind=Kind.SUPPRESSION if isinstance(event, SubjectSuppressed) else Kind.UNSUPPRESSION,
            subject_ids=event.subjects(),
            identifier_types=(),
            profile_id=event.profile_id,
            profile_ids=(event.profile_id,) if event.profile_id else (),
            regulation=DEFAULT_REGULATION,
            requested_at=requested,
            due_at=due_at(requested, DEFAULT_REGULATION),
            external_reference=event.external_reference,
            actor=actor,
            state=State.COMPLETED,
            completed_at=requested,
        )
    return None


def person_streams(subject_ids: Sequence[str], profile_ids: Sequence[str]) -> tuple[str, ...]:
    """Every stream that holds only this person: their messages and consent, their profiles' decisions and
    memberships. (Requests' own `dsr-` streams are kept: they are the proof, and name only pseudonymous ids.)"""
    named = [streams.subject_stream(s) for s in subject_ids] + [
        streams.consent_stream(s) for s in subject_ids
    ]
    named += [streams.profile_stream(p) for p in profile_ids] + [
        streams.membership_stream(p) for p in profile_ids
    ]
    return tuple(dict.fromkeys(named))


SKIPPED_CATEGORIES = (streams.REQUEST,)
"""Streams an erasure's log scan leaves alone: the requests themselves."""


def without_person(event: MessagesAttributed, subjects: set[str], profiles: set[str]) -> MessagesAttributed:
    """The profile stream's batch without the person's entries.

    A `MessagesAttributed` lists many people's messages: the person's entries are cut out, the rest stays,
    so everyone else's attributions (and every rebuild from the log) are unchanged. A batch of the person's
    alone stays as an empty batch, so the stream's `after_position`/`through_position` chain has no gap.
    """
    kept = [
        entry
        for entry in event.entries()
        if entry.subject_id not in subjects and entry.profile_id not in profiles
    ]
    return MessagesAttributed(
        after_position=event.after_position,
        through_position=event.through_position,
        positions=tuple(e.position for e in kept),
        event_ids=tuple(e.event_id for e in kept),
        subject_ids=tuple(e.subject_id for e in kept),
        profile_ids=tuple(e.profile_id for e in kept),
    )


def to_json(request: Request) -> dict[str, Any]:
    """The request as a JSON object (the read model keeps it so), free of personal data."""
    return {
        "request_id": request.request_id,
        "kind": request.kind.value,
        "subject_ids": list(request.subject_ids),
        "identifier_types": list(request.identifier_types),
        "profile_id": request.profile_id,
        "profile_ids": list(request.profile_ids),
        "regulation": request.regulation,
        "requested_at": _stamp(request.requested_at),
        "due_at": _stamp(request.due_at),
        "external_reference": request.external_reference,
        "actor": request.actor,
        "suppress": request.suppress,
        "state": request.state.value,
        "steps": [
            {
                "name": step.name,
                "completed_at": _stamp(step.completed_at),
                "detail": step.detail,
                "counts": dict(step.counts),
                "error": step.error,
                "attempts": step.attempts,
            }
            for step in request.steps.values()
        ],
        "completed_at": _stamp(request.completed_at),
        "started_at": _stamp(request.started_at),
        "receipt": dict(request.receipt),
        "export_counts": dict(request.export_counts),
        "confirmations": {service: sorted(s) for service, s in request.confirmations.items()},
        "rows_purged": dict(request.rows_purged),
    }


def from_json(data: Mapping[str, Any]) -> Request:
    """The request `to_json` wrote."""
    return Request(
        request_id=data["request_id"],
        kind=Kind(data["kind"]),
        subject_ids=tuple(data["subject_ids"]),
        identifier_types=tuple(data["identifier_types"]),
        profile_id=data["profile_id"],
        profile_ids=tuple(data["profile_ids"]),
        regulation=data["regulation"],
        requested_at=_moment(data["requested_at"]) or datetime.min,
        due_at=_moment(data["due_at"]) or datetime.min,
        external_reference=data["external_reference"],
        actor=data["actor"],
        suppress=data["suppress"],
        state=State(data["state"]),
        steps={
            step["name"]: Step(
                step["name"],
                _moment(step["completed_at"]),
                step["detail"],
                step["counts"],
                step["error"],
                step["attempts"],
            )
            for step in data["steps"]
        },
        completed_at=_moment(data["completed_at"]),
        started_at=_moment(data["started_at"]),
        receipt=data["receipt"],
        export_counts=data["export_counts"],
        confirmations={service: set(s) for service, s in data["confirmations"].items()},
        rows_purged=dict(data.get("rows_purged", {})),
    )


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
