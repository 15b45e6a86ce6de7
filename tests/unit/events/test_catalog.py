"""The catalog: every event round-trips through the log's envelope, names are stable and well-formed."""

from __future__ import annotations

import dataclasses
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.eventlog.port import NewEvent, RecordedEvent
from cdp.events import (
    CATALOG,
    REGISTRY,
    ConsentChanged,
    DomainEvent,
    EventCatalogError,
    EventMetadata,
    MessageCollected,
    UnknownEventType,
    from_recorded,
)

SUBJECT = "0123456789abcdef0123456789abcdef"
MOMENT = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
ALL_EVENTS = [cls for classes in CATALOG.values() for cls in classes]


def recorded(new: NewEvent, stream: str = "test-1") -> RecordedEvent:
    """What the log would hand back for an appended event."""
    return RecordedEvent(new.id, stream, 0, 0, new.type, new.data, new.metadata, MOMENT)


def sample(cls: type[DomainEvent]) -> DomainEvent:
    """An instance with a plausible value for every field, derived from the type hints."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _sample_value(hints[f.name]) for f in dataclasses.fields(cls)})


def message(**changes: Any) -> MessageCollected:
    """A sample MessageCollected with some fields changed."""
    base = sample(MessageCollected)
    assert isinstance(base, MessageCollected)
    return dataclasses.replace(base, **changes)


def _sample_value(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args:
        return _sample_value(next(a for a in args if a is not type(None)))
    if hint is datetime:
        return MOMENT
    if origin is tuple:
        return (SUBJECT, "b")
    if origin is not None and "Mapping" in str(origin):
        return {"k": _sample_value(args[1]) if args[1] is not Any else {"nested": [1, "x"]}}
    return {str: "x1", int: 3, bool: True, float: 1.5}[hint]


def test_catalog_and_registry_agree() -> None:
    assert sorted(cls.type_name for cls in ALL_EVENTS) == sorted(REGISTRY.type_names())
    assert len(ALL_EVENTS) == 33


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda cls: cls.type_name)
def test_every_event_round_trips_through_the_log_envelope(cls: type[DomainEvent]) -> None:
    event = sample(cls)
    new = event.to_new_event(EventMetadata(actor="service:identity"))
    assert new.type == cls.__name__
    assert new.metadata["schema_version"] == "1"
    assert from_recorded(recorded(new)) == event


def test_datetimes_are_iso_utc_and_naive_ones_refused() -> None:
    event = sample(MessageCollected)
    assert b'"timestamp":"2024-05-01T12:30:15.123456Z"' in event.to_json()
    paris = MOMENT.astimezone(timezone(timedelta(hours=2)))
    moved = message(timestamp=paris)
    assert b'"timestamp":"2024-05-01T12:30:15.123456Z"' in moved.to_json()
    naive = message(timestamp=MOMENT.replace(tzinfo=None))
    with pytest.raises(EventCatalogError, match="naive"):
        naive.to_json()


def test_equal_events_give_equal_bytes() -> None:
    assert sample(ConsentChanged).to_json() == sample(ConsentChanged).to_json()


def test_unknown_type_is_a_specific_error() -> None:
    new = NewEvent(type="SomethingElse", data=b"{}")
    with pytest.raises(UnknownEventType):
        from_recorded(recorded(new))


def test_fields_added_later_are_ignored_by_older_readers() -> None:
    new = sample(ConsentChanged).to_new_event(EventMetadata(actor="admin"))
    body = new.data[:-1] + b',"added_in_a_later_release":1}'
    assert from_recorded(recorded(dataclasses.replace(new, data=body))) == sample(ConsentChanged)


def test_a_body_missing_a_required_field_is_refused() -> None:
    new = NewEvent(type="ConsentChanged", data=b'{"purposes":{}}')
    with pytest.raises(EventCatalogError, match="does not fit"):
        from_recorded(recorded(new))


def test_a_version_newer_than_the_code_is_refused() -> None:
    new = sample(ConsentChanged).to_new_event(EventMetadata(actor="admin"))
    newer = dataclasses.replace(new, metadata={**new.metadata, "schema_version": "7"})
    with pytest.raises(EventCatalogError, match="newer"):
        from_recorded(recorded(newer))


def test_a_deterministic_id_is_kept() -> None:
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, "message-1")
    assert sample(ConsentChanged).to_new_event(EventMetadata(actor="admin"), id=event_id).id == event_id


@given(purposes=st.dictionaries(st.text(min_size=1), st.booleans()), source=st.none() | st.text())
def test_consent_round_trips_for_any_purposes(purposes: dict[str, bool], source: str | None) -> None:
    event = ConsentChanged(subject_id=SUBJECT, purposes=purposes, source_id=source)
    assert from_recorded(recorded(event.to_new_event(EventMetadata(actor="admin")))) == event


@given(moment=st.datetimes(timezones=st.just(UTC)), name=st.none() | st.text())
def test_message_round_trips_for_any_time_and_name(moment: datetime, name: str | None) -> None:
    event = message(timestamp=moment, event_name=name)
    assert from_recorded(recorded(event.to_new_event(EventMetadata(actor="source:wk_1")))) == event
