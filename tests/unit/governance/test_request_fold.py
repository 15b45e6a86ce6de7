"""A data subject request folded from its stream: states, steps, confirmations, deadlines, and the shared-event cut."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdp.events.envelope import DomainEvent
from cdp.events.governance import (
    AccessCompleted,
    AccessRequested,
    ErasureCompleted,
    ErasureRequested,
    ReadModelPurged,
    RequestStepCompleted,
    RequestStepFailed,
    SubjectErased,
    SubjectSuppressed,
)
from cdp.events.identity import MessagesAttributed
from services.governance.domain import requests as dsr
from services.governance.domain.requests import Kind, State

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
A, B, C = "a" * 32, "b" * 32, "c" * 32


def erasure(**changes: object) -> ErasureRequested:
    fields: dict[str, object] = {
        "request_id": "r1",
        "subject_ids": (A, B),
        "identifier_types": ("user_id", "email"),
        "profile_id": "p1",
        "profile_ids": ("p1", "p0"),
        "requested_at": T0,
    }
    fields.update(changes)
    return ErasureRequested(**fields)  # type: ignore[arg-type]


def step(name: str, minutes: int) -> RequestStepCompleted:
    return RequestStepCompleted(
        request_id="r1", step=name, counts={"n": 1}, completed_at=T0 + timedelta(minutes=minutes)
    )


def test_an_erasure_moves_from_pending_to_in_progress_to_completed() -> None:
    events: list[tuple[DomainEvent, str, datetime]] = [(erasure(), "admin", T0)]
    request = dsr.fold(events)
    assert request is not None and request.state is State.PENDING and request.kind is Kind.ERASURE
    assert request.due_at == T0 + timedelta(days=30)
    events.append((step(dsr.KEYS_DESTROYED, 1), "service:governance", T0))
    request = dsr.fold(events)
    assert request is not None and request.state is State.IN_PROGRESS and request.done(dsr.KEYS_DESTROYED)
    assert not request.done(dsr.ANNOUNCED)
    done = ErasureCompleted(
        request_id="r1",
        receipt={"events_deleted": 3},
        started_at=T0,
        completed_at=T0 + timedelta(minutes=2),
        deadline_met=True,
    )
    request = dsr.fold([*events, (done, "service:governance", T0)])
    assert request is not None and request.state is State.COMPLETED
    assert request.receipt == {"events_deleted": 3} and request.actor == "admin"


def test_confirmations_count_per_service_and_subject() -> None:
    purged = [
        ReadModelPurged(request_id="r1", service="identity", subject_id=A, purged_at=T0),
        ReadModelPurged(request_id="r1", service="segments", subject_id=A, purged_at=T0),
        ReadModelPurged(request_id="r1", service="identity", subject_id=B, purged_at=T0),
    ]
    announced = [SubjectErased(request_id="r1", subject_id=s) for s in (A, B)]
    request = dsr.fold([(e, "service:x", T0) for e in [erasure(), *announced, *purged]])
    assert request is not None
    assert (
        request.purged_by("identity")
        and not request.purged_by("segments")
        and not request.purged_by("ingest")
    )


def test_a_failed_step_keeps_the_request_in_progress_with_its_error_until_it_succeeds() -> None:
    failed = RequestStepFailed(
        request_id="r1", step=dsr.LOG_ERASED, error="log away", attempt=2, failed_at=T0
    )
    request = dsr.fold([(erasure(), "admin", T0), (failed, "service:governance", T0)])
    assert request is not None and request.state is State.IN_PROGRESS
    assert not request.done(dsr.LOG_ERASED) and request.steps[dsr.LOG_ERASED].error == "log away"
    request = dsr.fold(
        [(erasure(), "admin", T0), (failed, "s", T0), (step(dsr.LOG_ERASED, 3), "s", T0), (failed, "s", T0)]
    )
    assert request is not None and request.done(dsr.LOG_ERASED)  # a late failure record does not undo it


def test_deadlines_follow_the_regulation_and_overdue_is_open_past_it_or_completed_late() -> None:
    ccpa = dsr.fold([(erasure(regulation="ccpa"), "admin", T0)])
    assert ccpa is not None and ccpa.due_at == T0 + timedelta(days=45)
    assert not ccpa.overdue(T0 + timedelta(days=44)) and ccpa.overdue(T0 + timedelta(days=46))
    access = AccessRequested(request_id="r2", subject_ids=(A,), requested_at=T0)
    late = AccessCompleted(request_id="r2", sealed_for=A, export="x", completed_at=T0 + timedelta(days=31))
    request = dsr.fold([(access, "admin", T0), (late, "s", T0)])
    assert (
        request is not None and request.state is State.COMPLETED and request.overdue(T0 + timedelta(days=90))
    )


def test_a_suppression_is_a_completed_request_of_its_own() -> None:
    event = SubjectSuppressed(
        request_id="r3", subject_ids=(A, B), reason="suppression request", requested_at=T0
    )
    request = dsr.fold([(event, "admin", T0)])
    assert request is not None and request.kind is Kind.SUPPRESSION and request.state is State.COMPLETED
    assert request.subject_ids == (A, B)


def test_the_read_model_form_round_trips() -> None:
    events = [
        (erasure(suppress=True), "admin", T0),
        (step(dsr.KEYS_DESTROYED, 1), "s", T0),
        (ReadModelPurged(request_id="r1", service="ingest", subject_id=A, purged_at=T0), "s", T0),
    ]
    request = dsr.fold(events)
    assert request is not None
    assert dsr.from_json(dsr.to_json(request)) == request


def test_the_persons_own_streams_are_their_messages_consent_profiles_and_memberships() -> None:
    request = dsr.fold([(erasure(), "admin", T0)])
    assert request is not None
    assert set(request.person_streams) == {
        f"subject-{A}",
        f"subject-{B}",
        f"consent-{A}",
        f"consent-{B}",
        "profile-p1",
        "profile-p0",
        "membership-p1",
        "membership-p0",
    }


def test_a_shared_batch_loses_only_the_persons_entries() -> None:
    batch = MessagesAttributed(
        after_position=10,
        through_position=20,
        positions=(11, 12, 13),
        event_ids=("e1", "e2", "e3"),
        subject_ids=(A, C, B),
        profile_ids=("p1", "p9", "p0"),
    )
    cut = dsr.without_person(batch, {A, B}, {"p1", "p0"})
    assert cut.entries() == [batch.entries()[1]]
    assert (cut.after_position, cut.through_position) == (10, 20)
    alone = dsr.without_person(batch, {A, B, C}, set())
    assert alone.positions == () and alone.through_position == 20  # kept, empty: the chain has no gap
