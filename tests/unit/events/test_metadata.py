"""Event metadata: correlation and causation chains, actors, and no personal data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from cdp.eventlog.port import RecordedEvent
from cdp.events import EventMetadata


def recorded_with(metadata: dict[str, str]) -> RecordedEvent:
    return RecordedEvent(
        uuid.uuid4(), "subject-x", 0, 5, "MessageCollected", b"{}", metadata, datetime.now(UTC)
    )


def test_caused_by_keeps_the_correlation_and_points_at_the_cause() -> None:
    cause = recorded_with({"actor": "source:wk1", "correlation_id": "req-42", "schema_version": "1"})
    meta = EventMetadata.caused_by(cause, "service:identity")
    assert meta.correlation_id == "req-42"
    assert meta.causation_id == str(cause.id)
    assert meta.actor == "service:identity"


def test_a_cause_without_correlation_starts_one_from_its_id() -> None:
    cause = recorded_with({})
    assert EventMetadata.caused_by(cause, "system").correlation_id == str(cause.id)


def test_new_metadata_gets_a_fresh_correlation_id() -> None:
    assert EventMetadata("admin").correlation_id != EventMetadata("admin").correlation_id


def test_round_trip_through_the_stored_mapping() -> None:
    meta = EventMetadata("admin:token_1", "corr-1", "cause-1")
    mapping = meta.to_mapping(2)
    assert mapping == {
        "actor": "admin:token_1",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "schema_version": "2",
    }
    assert EventMetadata.of(recorded_with(mapping)) == meta


@pytest.mark.parametrize("actor", ["jane@example.com", "source:jane@example.com", "user:42", "Jane Doe", ""])
def test_actors_that_could_carry_personal_data_are_refused(actor: str) -> None:
    with pytest.raises(ValueError, match="actor"):
        EventMetadata(actor)


def test_correlation_ids_must_be_opaque() -> None:
    with pytest.raises(ValueError, match="correlation_id"):
        EventMetadata("admin", correlation_id="jane@example.com")
