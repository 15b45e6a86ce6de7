"""Decisions ↔ catalog events: round trips, and the hot-path encoder equals the catalog's."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from cdp.eventlog.port import RecordedEvent
from cdp.events import EventMetadata, from_recorded
from cdp.events.envelope import EventCatalogError
from cdp.events.ingest import MessageCollected
from services.identity import codec
from services.identity.domain import decisions as d
from tests.unit.identity.helpers import T0

SUBJECT = "0123456789abcdef0123456789abcdef"
DECISIONS: list[d.Decision] = [
    d.Linked(
        "6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e6f", "p1", "email", SUBJECT, "shared_message", False, T0, "m1"
    ),
    d.Linked(
        "6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e70",
        "p1",
        "external:crm_id",
        SUBJECT,
        "new_identifier",
        True,
        None,
        "é",
    ),
    d.Merged("6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e71", "p1", "p2", "alias", "m2", T0),
    d.Rejected(
        "6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e72", "p1", "", "value_limit:email", "email", SUBJECT, "m3", T0
    ),
    d.Split("6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e73", "p1", "p3", (SUBJECT,), "shared tablet", True, "x", T0),
]
META = EventMetadata(actor="service:identity", correlation_id="c-1", causation_id="e-1")


@pytest.mark.parametrize("decision", DECISIONS, ids=lambda x: type(x).__name__)
def test_every_decision_round_trips_through_its_event(decision: d.Decision) -> None:
    new = codec.new_event(decision, META)
    assert new == codec.to_event(decision).to_new_event(META, id=new.id)  # fast path == catalog encoder
    recorded = RecordedEvent(new.id, "profile-p1", 0, 0, new.type, new.data, new.metadata, T0)
    assert codec.from_event(str(new.id), from_recorded(recorded)) == decision
    assert codec.decode_decision(recorded) == decision  # the direct decoder equals the catalog's


def test_the_decision_decoder_takes_the_catalogs_path_for_anything_unusual() -> None:
    decision = d.Rejected(
        "6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e74", "p1", "", "max_merges", "email", SUBJECT, "m4"
    )
    new = codec.new_event(decision, META)
    # An event recorded before the newer fields existed: the defaults apply, as in the catalog.
    body = {
        k: v for k, v in json.loads(new.data).items() if k not in ("decided_at", "causing_message_position")
    }
    old = RecordedEvent(new.id, "profile-p1", 0, 0, new.type, json.dumps(body).encode(), new.metadata, T0)
    assert codec.decode_decision(old) == codec.from_event(str(new.id), from_recorded(old)) == decision
    # A body that does not fit: the catalog's error, not a half-built decision.
    broken = replace(old, data=b'{"profile_id": "p1"}')
    with pytest.raises(EventCatalogError):
        codec.decode_decision(broken)
    assert codec.decode_decision(replace(old, type="MessageCollected")) is None


def test_a_messages_decisions_encode_together_as_one_by_one() -> None:
    together = codec.new_events(DECISIONS, META)
    assert together == [
        (codec.stream_of(x), codec.to_event(x).to_new_event(META, id=e.id))
        for x, (_, e) in zip(DECISIONS, together, strict=True)
    ]
    assert [e.id for _, e in together] == [uuid.UUID(x.decision_id) for x in DECISIONS]


def _recorded(body: bytes, *, event_type: str = "MessageCollected", version: str = "1") -> RecordedEvent:
    meta = {**META.to_mapping(1), "schema_version": version}
    return RecordedEvent(uuid.uuid4(), "subject-x", 0, 0, event_type, body, meta, T0)


MESSAGE = MessageCollected(
    message_id="m-1",
    message_type="track",
    source_id="web",
    subject_id=SUBJECT,
    event_name="Order Completed",
    timestamp=datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
    received_at=T0,
    identifiers={"user_id": SUBJECT},
    payload="c2VhbGVk",
)
MESSAGES = [
    MESSAGE,
    replace(MESSAGE, event_name=None, sent_at=T0 + timedelta(seconds=3), plan_violations=("a.b: extra",)),
    replace(MESSAGE, message_type="identify", identifiers={}, source_id="é"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_the_message_decoder_equals_the_catalogs(message: MessageCollected) -> None:
    new = message.to_new_event(META)
    recorded = RecordedEvent(new.id, "subject-x", 0, 0, new.type, new.data, new.metadata, T0)
    decoded = codec.decode(recorded)
    catalog = from_recorded(recorded)
    assert decoded == catalog == message
    assert isinstance(decoded, MessageCollected) and isinstance(catalog, MessageCollected)
    assert decoded.timestamp.utcoffset() == catalog.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "body",
    [
        # Absent optional fields take defaults; present nulls stay null, as the catalog decodes them.
        {k: v for k, v in json.loads(MESSAGE.to_json()).items() if k not in ("event_name", "sent_at")},
        {**json.loads(MESSAGE.to_json()), "plan_violations": None, "unknown_field": 1},
        {**json.loads(MESSAGE.to_json()), "identifiers": {"user_id": "1" * 25}, "n": 12345678901234567890123},
    ],
)
def test_the_message_decoder_equals_the_catalog_on_unusual_bodies(body: dict[str, object]) -> None:
    recorded = _recorded(json.dumps(body).encode())
    assert codec.decode(recorded) == from_recorded(recorded)


def test_bodies_the_catalog_refuses_are_refused_alike() -> None:
    missing = {k: v for k, v in json.loads(MESSAGE.to_json()).items() if k != "payload"}
    for body in (json.dumps(missing).encode(), b"not json", b"[1, 2]"):
        with pytest.raises(EventCatalogError):
            from_recorded(_recorded(body))
        with pytest.raises(EventCatalogError):
            codec.decode(_recorded(body))
    with pytest.raises(EventCatalogError):  # a schema version newer than the code: the catalog's refusal
        codec.decode(_recorded(MESSAGE.to_json(), version="9"))


def test_other_events_are_decoded_by_the_catalog() -> None:
    new = codec.new_event(DECISIONS[2], META)
    recorded = RecordedEvent(new.id, "profile-p1", 0, 0, new.type, new.data, new.metadata, T0)
    assert codec.decode(recorded) == from_recorded(recorded)
