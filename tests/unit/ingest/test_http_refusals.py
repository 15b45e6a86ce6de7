"""Domain errors → HTTP answers: one table for the whole HTTP edge, Retry-After wherever waiting helps."""

from __future__ import annotations

import pytest

from cdp import errors
from services.ingest.http_api import refusal_of


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (errors.Unavailable("the event log is unavailable"), 503, "unavailable", "2"),
        (errors.Unavailable("busy", retry_after=0.2), 503, "unavailable", "1"),
        (errors.DeadlineExceeded("timed out"), 503, "timeout", "2"),
        (errors.ResourceExhausted("slow down", retry_after=3.5), 429, "too_many_requests", "4"),
        (errors.NotFound("no such source"), 404, "not_found", None),
        (errors.Conflict("lost a race"), 409, "conflict", None),
        (errors.NotBuiltYet("imports over HTTP"), 501, "not_implemented", None),
    ],
)
def test_each_domain_error_gets_its_status_and_a_retry_after_when_waiting_helps(
    error: errors.DomainError, status: int, code: str, retry_after: str | None
) -> None:
    refusal = refusal_of(error)
    assert (refusal.status, refusal.code, refusal.headers.get("Retry-After")) == (status, code, retry_after)


def test_invalid_input_names_each_field() -> None:
    refusal = refusal_of(errors.InvalidInput.field("batch[2].event", "is required"))
    assert refusal.status == 400
    assert refusal.details == [
        {"field": "batch[2].event", "reason": "invalid_field", "description": "is required"}
    ]
