"""Upcasting a real v1 → v2 change: events written by old code read as the new shape, straight from a log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from cdp.eventlog.memory import InMemoryEventStore
from cdp.events import DomainEvent, EventCatalogError, EventMetadata, EventRegistry

OLD, NEW = EventRegistry(), EventRegistry()


@dataclass(frozen=True, kw_only=True)
class ConsentGivenV1(DomainEvent, type_name="ConsentGiven", registry=OLD):
    """Release 1: one purpose per event."""

    subject_id: str
    purpose: str
    granted: bool


@dataclass(frozen=True, kw_only=True)
class ConsentGivenV2(DomainEvent, type_name="ConsentGiven", version=2, registry=NEW):
    """Release 2: every purpose at once, so a banner's answer is one fact."""

    subject_id: str
    purposes: Mapping[str, bool]


@NEW.upcaster("ConsentGiven", from_version=1)
def _one_purpose_to_many(body: dict[str, Any]) -> dict[str, Any]:
    return {"subject_id": body["subject_id"], "purposes": {body["purpose"]: body["granted"]}}


async def test_v1_events_in_the_log_read_as_v2() -> None:
    store = InMemoryEventStore()
    old = ConsentGivenV1(subject_id="s1", purpose="analytics", granted=True)
    new = ConsentGivenV2(subject_id="s1", purposes={"ads": False, "analytics": True})
    meta = EventMetadata("admin")
    await store.append("consent-s1", [old.to_new_event(meta), new.to_new_event(meta)])
    read = [NEW.from_recorded(event) for event in await store.read_stream("consent-s1")]
    assert [r.metadata["schema_version"] for r in await store.read_stream("consent-s1")] == ["1", "2"]
    assert read == [ConsentGivenV2(subject_id="s1", purposes={"analytics": True}), new]


def test_a_missing_upcaster_is_reported() -> None:
    bare = EventRegistry()

    @dataclass(frozen=True, kw_only=True)
    class Thing(DomainEvent, type_name="Thing", version=3, registry=bare):
        value: int

    with pytest.raises(EventCatalogError, match="no upcaster for Thing v1"):
        bare.decode("Thing", b'{"value":1}', schema_version=1)


def test_type_names_are_unique_and_pascal_case() -> None:
    registry = EventRegistry()

    @dataclass(frozen=True, kw_only=True)
    class First(DomainEvent, type_name="Same", registry=registry):
        pass

    with pytest.raises(EventCatalogError, match="already registered"):

        @dataclass(frozen=True, kw_only=True)
        class Second(DomainEvent, type_name="Same", registry=registry):
            pass

    with pytest.raises(EventCatalogError, match="PascalCase"):

        @dataclass(frozen=True, kw_only=True)
        class Bad(DomainEvent, type_name="cdp.bad-name", registry=registry):
            pass
