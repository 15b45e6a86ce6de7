"""Collection over real gRPC: stored once, encrypted per subject, bad input named, consent and suppression."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cdp.common.v1 import message_pb2
from cdp.events import ConsentChanged, MessageCollected, SubjectSuppressed, from_recorded, streams
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.runtime.errors import field_violations
from tests.integration.ingest.conftest import WRITE_KEY, Ingest, message, running_ingest, settings_for

IDENTIFY = message_pb2.MESSAGE_TYPE_IDENTIFY


async def test_a_track_is_stored_in_its_subject_stream_with_personal_fields_encrypted(ingest: Ingest) -> None:
    sent = message(
        userId="user-1",
        anonymousId="anon-1",
        event="Order Completed",
        messageId="m-1",
        properties={"revenue": 42.5},
        context={"ip": "203.0.113.7", "userAgent": "Mozilla/5.0"},
    )
    reply = await ingest.stub.Track(pb.TrackRequest(message=sent), metadata=WRITE_KEY)
    assert reply.result.status == pb.MESSAGE_STATUS_ACCEPTED
    assert reply.result.message_id == "m-1"

    subject = ingest.subject("user_id", "user-1")
    [recorded] = await ingest.log.read_stream(streams.subject_stream(subject))
    assert (
        b"user-1" not in recorded.data
        and b"203.0.113.7" not in recorded.data
        and b"42.5" not in recorded.data
    )
    event = from_recorded(recorded)
    assert isinstance(event, MessageCollected)
    assert event.event_name == "Order Completed" and event.source_id == "web"
    assert event.identifiers == {"user_id": subject, "anonymous_id": ingest.subject("anonymous_id", "anon-1")}
    payload = event.open_payload(ingest.keyring)
    assert payload["userId"] == "user-1" and payload["properties"] == {"revenue": 42.5}
    assert payload["context"]["ip"] == "203.0.113.7"


async def test_an_anonymous_message_goes_to_the_anonymous_subject(ingest: Ingest) -> None:
    await ingest.stub.Page(
        pb.PageRequest(message=message(message_pb2.MESSAGE_TYPE_PAGE, anonymousId="a-9", name="Home")),
        metadata=WRITE_KEY,
    )
    [event] = await ingest.collected()
    assert event.subject_id == ingest.subject("anonymous_id", "a-9")


async def test_a_message_id_is_stored_once_per_source(ingest: Ingest) -> None:
    request = pb.TrackRequest(message=message(userId="u", event="E", messageId="same"))
    first = await ingest.stub.Track(request, metadata=WRITE_KEY)
    second = await ingest.stub.Track(request, metadata=WRITE_KEY)
    other_source = await ingest.stub.Track(request, metadata=(("authorization", "Bearer ios-key"),))
    assert first.result.status == pb.MESSAGE_STATUS_ACCEPTED
    assert second.result.status == pb.MESSAGE_STATUS_DUPLICATE
    assert other_source.result.status == pb.MESSAGE_STATUS_ACCEPTED, "dedupe is per source"
    assert sorted(event.source_id for event in await ingest.collected()) == ["ios", "web"]


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    request = pb.IdentifyRequest(
        message=message(IDENTIFY, userId="u", messageId="kept", traits={"plan": "pro"})
    )
    async with running_ingest(settings) as ingest:
        assert (
            await ingest.stub.Identify(request, metadata=WRITE_KEY)
        ).result.status == pb.MESSAGE_STATUS_ACCEPTED
    async with running_ingest(settings) as ingest:
        assert (
            await ingest.stub.Identify(request, metadata=WRITE_KEY)
        ).result.status == pb.MESSAGE_STATUS_DUPLICATE
        assert len(await ingest.collected()) == 1


async def test_a_batch_reports_each_message_and_one_bad_message_sinks_nothing(ingest: Ingest) -> None:
    batch = pb.BatchRequest(
        messages=[
            message(userId="u1", event="Signed Up", messageId="b-1"),
            message(userId="u2", messageId="b-2"),  # a track without its event
            message(IDENTIFY, anonymousId="a3", traits={"email": "x@example.com"}, messageId="b-3"),
            message(userId="u1", event="Signed Up", messageId="b-1"),  # repeated within the batch
        ],
        context={"library": {"name": "analytics-python"}},
    )
    reply = await ingest.stub.Batch(batch, metadata=WRITE_KEY)
    statuses = [result.status for result in reply.results]
    assert statuses == [
        pb.MESSAGE_STATUS_ACCEPTED,
        pb.MESSAGE_STATUS_REJECTED,
        pb.MESSAGE_STATUS_ACCEPTED,
        pb.MESSAGE_STATUS_DUPLICATE,
    ]
    rejected = reply.results[1]
    assert rejected.reason == pb.REJECTION_REASON_MISSING_FIELD
    assert [v.field for v in rejected.field_violations] == ["messages[1].event"]
    assert (reply.accepted_count, reply.rejected_count, reply.duplicate_count) == (2, 1, 1)
    stored = {event.message_id: event for event in await ingest.collected()}
    assert sorted(stored) == ["b-1", "b-3"]
    assert stored["b-1"].open_payload(ingest.keyring)["context"]["library"]["name"] == "analytics-python"


async def test_a_batch_over_the_limits_fails_whole(ingest: Ingest) -> None:
    too_many = pb.BatchRequest(messages=[message(userId="u", event="E")] * 2501)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Batch(too_many, metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value)[0][0] == "messages"
    too_big = pb.BatchRequest(messages=[message(userId="u", event="E", properties={"x": "y" * 30_000})] * 20)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Batch(too_big, metadata=WRITE_KEY)
    assert "bytes" in field_violations(raised.value)[0][1]
    assert await ingest.collected() == []


async def test_a_rejected_single_message_is_invalid_argument_naming_the_field(ingest: Ingest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Alias(
            pb.AliasRequest(message=message(message_pb2.MESSAGE_TYPE_ALIAS, userId="u")), metadata=WRITE_KEY
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [("message.previousId", "is required for alias")]


async def test_consent_preferences_become_consent_changes_only_when_they_change(ingest: Ingest) -> None:
    def with_consent(message_id: str, advertising: bool) -> pb.TrackRequest:
        consent = {"consent": {"categoryPreferences": {"Advertising": advertising, "Analytics": True}}}
        return pb.TrackRequest(
            message=message(userId="c", event="Viewed", messageId=message_id, context=consent)
        )

    await ingest.stub.Track(with_consent("c-1", True), metadata=WRITE_KEY)
    await ingest.stub.Track(with_consent("c-2", True), metadata=WRITE_KEY)
    await ingest.stub.Track(with_consent("c-3", False), metadata=WRITE_KEY)
    await ingest.stub.Track(
        pb.TrackRequest(
            message=message(
                userId="c",
                event="Segment Consent Preference Updated",
                messageId="c-4",
                context={"consent": {"categoryPreferences": {"Advertising": False}}},
            )
        ),
        metadata=WRITE_KEY,
    )
    recorded = await ingest.log.read_stream(streams.consent_stream(ingest.subject("user_id", "c")))
    changes = [change for change in map(from_recorded, recorded) if isinstance(change, ConsentChanged)]
    assert len(changes) == len(recorded)
    assert [dict(change.purposes) for change in changes] == [
        {"advertising": True, "analytics": True},
        {"advertising": False, "analytics": True},
        {"advertising": False},
    ]


async def test_messages_of_a_suppressed_subject_are_dropped(ingest: Ingest) -> None:
    subject = ingest.subject("anonymous_id", "gone")
    await ingest.append_as_governance(
        streams.consent_stream(subject), SubjectSuppressed(subject_id=subject, reason="erasure request")
    )
    await until_projected(ingest)
    reply = await ingest.stub.Batch(
        pb.BatchRequest(
            messages=[message(anonymousId="gone", event="E"), message(anonymousId="kept", event="E")]
        ),
        metadata=WRITE_KEY,
    )
    assert reply.results[0].status == pb.MESSAGE_STATUS_REJECTED
    assert reply.results[0].reason == pb.REJECTION_REASON_SUPPRESSED
    assert reply.results[1].status == pb.MESSAGE_STATUS_ACCEPTED
    assert [event.subject_id for event in await ingest.collected()] == [
        ingest.subject("anonymous_id", "kept")
    ]


async def until_projected(ingest: Ingest) -> None:
    """Wait until ingest's read model has caught up with the log (it follows it in the background)."""
    await ingest.settled()


async def test_stream_messages_acknowledges_every_message_in_order(ingest: Ingest) -> None:
    async def produce() -> AsyncIterator[pb.StreamMessagesRequest]:
        for sequence in range(1, 301):
            yield pb.StreamMessagesRequest(
                sequence=sequence,
                message=message(userId=f"s{sequence % 7}", event="Tick", messageId=f"t-{sequence}"),
            )

    acks = [ack async for ack in ingest.stub.StreamMessages(produce(), metadata=WRITE_KEY)]
    assert [ack.sequence for ack in acks] == list(range(1, 301))
    assert all(ack.result.status == pb.MESSAGE_STATUS_ACCEPTED and ack.window > 0 for ack in acks)
    assert len(await ingest.collected()) == 300


async def test_stream_messages_refuses_a_sequence_that_does_not_increase(ingest: Ingest) -> None:
    async def produce() -> AsyncIterator[pb.StreamMessagesRequest]:
        for sequence in (1, 2, 2):
            yield pb.StreamMessagesRequest(sequence=sequence, message=message(userId="u", event="E"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in ingest.stub.StreamMessages(produce(), metadata=WRITE_KEY):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value)[0][0] == "sequence"


async def test_messages_about_an_erased_person_are_dropped_not_failed(ingest: Ingest) -> None:
    subject = ingest.subject("user_id", "forgotten")
    await asyncio.to_thread(ingest.keyring.shred, subject)
    reply = await ingest.stub.Batch(
        pb.BatchRequest(
            messages=[message(userId="forgotten", event="E"), message(userId="other", event="E")]
        ),
        metadata=WRITE_KEY,
    )
    assert [r.status for r in reply.results] == [pb.MESSAGE_STATUS_REJECTED, pb.MESSAGE_STATUS_ACCEPTED]
    assert reply.results[0].reason == pb.REJECTION_REASON_SUPPRESSED
    assert [event.subject_id for event in await ingest.collected()] == [ingest.subject("user_id", "other")]


async def test_a_number_json_cannot_hold_is_refused_by_field_and_integers_stay_integers(
    ingest: Ingest,
) -> None:
    bad = message(userId="u", event="Priced", messageId="nan")
    bad.properties["price"] = float("nan")
    good = message(userId="u", event="Priced", messageId="ok", properties={"quantity": 2, "price": 9.5})
    reply = await ingest.stub.Batch(pb.BatchRequest(messages=[bad, good]), metadata=WRITE_KEY)
    assert [r.status for r in reply.results] == [pb.MESSAGE_STATUS_REJECTED, pb.MESSAGE_STATUS_ACCEPTED]
    assert [v.field for v in reply.results[0].field_violations] == ["messages[0].properties.price"]
    [stored] = await ingest.collected()
    properties = stored.open_payload(ingest.keyring)["properties"]
    assert properties == {"quantity": 2, "price": 9.5} and isinstance(properties["quantity"], int)

    infinite = message(userId="u", event="Priced")
    infinite.properties["price"] = float("inf")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Track(pb.TrackRequest(message=infinite), metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value)[0][0] == "message.properties.price"


async def test_a_batch_context_json_cannot_hold_is_invalid_argument_naming_it(ingest: Ingest) -> None:
    batch = pb.BatchRequest(messages=[message(userId="u", event="E")])
    batch.context["screen"] = float("inf")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.Batch(batch, metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value)[0][0] == "context.screen"
    assert await ingest.collected() == []
