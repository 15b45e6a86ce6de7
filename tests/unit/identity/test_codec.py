"""Decisions ↔ catalog events: round trips, and the hot-path encoder equals the catalog's."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest

from cdp.eventlog.port import RecordedEvent
from cdp.events import EventMetadata, from_recorded
from cdp.events.envelope import EventCatalogError
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
    assert codec.decode_decision(recorded) == decision


def test_the_decision_decoder_reads_older_bodies_and_refuses_broken_ones() -> None:
    decision = d.Rejected(
        "6f1c0d38-54a5-5f4a-9d3c-1b2a3c4d5e74", "p1", "", "max_merges", "email", SUBJECT, "m4"
    )
    new = codec.new_event(decision, META)
    # An event recorded before the newer fields existed: the defaults apply.
    body = {
        k: v for k, v in json.loads(new.data).items() if k not in ("decided_at", "causing_message_position")
    }
    old = RecordedEvent(new.id, "profile-p1", 0, 0, new.type, json.dumps(body).encode(), new.metadata, T0)
    assert codec.decode_decision(old) == decision
    # A body that does not fit: the catalog's error, not a half-built decision.
    broken = replace(old, data=b'{"profile_id": "p1"}')
    with pytest.raises(EventCatalogError):
        codec.decode_decision(broken)
    assert codec.decode_decision(replace(broken, type="MessageCollected")) is None  # not even decoded


def test_a_messages_decisions_encode_together_as_one_by_one() -> None:
    together = codec.new_events(DECISIONS, META)
    assert together == [
        (codec.stream_of(x), codec.to_event(x).to_new_event(META, id=e.id))
        for x, (_, e) in zip(DECISIONS, together, strict=True)
    ]
    assert [e.id for _, e in together] == [uuid.UUID(x.decision_id) for x in DECISIONS]
