"""Data subject requests through real gRPC servers on loopback (ingest, identity, segments, governance), both logs.

Access exports what the platform knows; suppression makes ingest drop (and count) a person's messages until
unsuppressed; an erasure waiting for a service that never confirms stays open, is answered again instead of
opened twice, and shows where it waits; requests past their deadline are listed as overdue; bad input is
answered INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cdp.common.v1 import identity_pb2, message_pb2
from cdp.eventlog import EventStore
from cdp.events import EventMetadata, streams
from cdp.events.governance import ErasureRequested
from cdp.governance.v1 import governance_service_pb2 as pb
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.ingest.v1 import ingest_service_pb2 as ingest_pb
from cdp.runtime import resources
from cdp.runtime.errors import field_violations
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.governance.main import assemble as assemble_governance
from services.segments.main import assemble as assemble_segments
from tests.integration.identity.conftest import backend, running_harness
from tests.integration.ingest.conftest import WRITE_KEY, message, running_ingest
from tests.waiting import eventually

__all__ = ["backend"]

ADMIN = (("authorization", "Bearer dev-admin-token"),)
WRITE = WRITE_KEY
USER, EMAIL = identity_pb2.IDENTIFIER_TYPE_USER_ID, identity_pb2.IDENTIFIER_TYPE_EMAIL


def ref(kind: identity_pb2.IdentifierType, value: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=kind, value=value))


@dataclass
class Platform:
    governance: governance_service_pb2_grpc.GovernanceServiceAsyncStub
    ingest: Any
    identity: Any
    log: EventStore

    async def send(self, *messages: message_pb2.Message) -> list[ingest_pb.MessageResult]:
        reply = await self.ingest.Batch(ingest_pb.BatchRequest(messages=list(messages)), metadata=WRITE)
        return list(reply.results)

    async def request(self, request_id: str) -> pb.SubjectRequest:
        reply = await self.governance.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=ADMIN)
        found: pb.SubjectRequest = reply.request
        return found

    async def completed(self, request_id: str) -> pb.SubjectRequest:
        found: list[pb.SubjectRequest] = []

        async def done() -> bool:
            found.append(await self.request(request_id))
            return found[-1].state == pb.REQUEST_STATE_COMPLETED

        await eventually(done)
        return found[-1]


@pytest.fixture
async def platform(tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Platform]:
    env = {"CDP_DATA_DIR": str(tmp_path), "CDP_WRITE_KEYS": "web:web-key", "CDP_HTTP_PORT": "0"}
    env.update({f"CDP_{name.upper()}": value for name, value in backend.items()})
    # Activation is not running here: an erasure waits for its confirmation, and stays open to be looked at.
    env["CDP_ERASURE_PURGERS"] = "ingest,identity,segments,activation"
    settings = replace(Settings.from_env(env), grace_seconds=0.5)
    async with running_harness(settings) as identity, running_ingest(settings) as ingest:
        settings = replace(settings, identity_port=int(identity.server.address.rsplit(":", 1)[1]))
        segments_app, _ = await assemble_segments(settings)
        governance_app, _ = await assemble_governance(settings)
        servers = [GrpcServer(segments_app, settings, port=0), GrpcServer(governance_app, settings, port=0)]
        for server in servers:
            await server.start()
        log = resources.event_store(settings)
        try:
            async with grpc.aio.insecure_channel(servers[1].address) as channel:
                stub: governance_service_pb2_grpc.GovernanceServiceAsyncStub = (
                    governance_service_pb2_grpc.GovernanceServiceStub(channel)
                )
                yield Platform(stub, ingest.stub, identity.stub, log)
        finally:
            for server in reversed(servers):
                await server.stop()
            await log.close()


def identify(user: str, **traits: Any) -> message_pb2.Message:
    return message(message_pb2.MESSAGE_TYPE_IDENTIFY, userId=user, anonymousId=f"anon-{user}", traits=traits)


async def known(platform: Platform, user: str) -> None:
    """Wait until identity has the user's profile."""
    from cdp.identity.v1 import identity_service_pb2 as identity_pb

    async def found() -> bool:
        try:
            await platform.identity.GetProfile(
                identity_pb.GetProfileRequest(profile=ref(USER, user)), metadata=ADMIN
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    await eventually(found)


async def test_an_access_export_holds_the_profile_every_message_and_the_consent_history(
    platform: Platform,
) -> None:
    consent = {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}}
    await platform.send(
        identify("ana", email="ana@example.com", name="Ana Lima", plan="pro"),
        message(userId="ana", event="Order Completed", properties={"revenue": 30}, context=consent),
        message(message_pb2.MESSAGE_TYPE_PAGE, anonymousId="anon-ana", name="Home"),
        identify("other", email="other@example.com"),
    )
    await known(platform, "ana")
    opened = (
        await platform.governance.RequestAccess(
            pb.RequestAccessRequest(subject=ref(EMAIL, "ANA@example.com "), external_reference="T-7"),
            metadata=ADMIN,
        )
    ).request
    assert opened.kind == pb.REQUEST_KIND_ACCESS and opened.state == pb.REQUEST_STATE_PENDING
    assert {i.value for i in opened.identifiers} >= {"ana", "anon-ana", "ana@example.com"}
    assert opened.due_time.ToDatetime() - opened.create_time.ToDatetime() == timedelta(days=30)
    assert opened.requested_by.id == "admin"
    done = await platform.completed(opened.request_id)
    export: dict[str, Any] = json.loads(json_format.MessageToJson(done.export))
    assert {m["type"] for m in export["messages"]} == {"identify", "track", "page"}
    assert any(m.get("traits", {}).get("name") == "Ana Lima" for m in export["messages"])
    assert export["profile"]["traits"]["plan"] == "pro"
    assert [c["purposes"] for c in export["consent_history"]] == [{"analytics": True, "advertising": False}]
    assert export["consent_history"][0]["source"] == "message"
    assert "other@example.com" not in json.dumps(export)
    assert [s.name for s in done.steps] == ["started"]
    listed = await platform.governance.ListRequests(
        pb.ListRequestsRequest(kind=pb.REQUEST_KIND_ACCESS), metadata=ADMIN
    )
    assert [r.request_id for r in listed.requests] == [opened.request_id]
    assert not listed.requests[0].HasField("export")  # exports only through GetRequest
    assert all(not i.value for i in listed.requests[0].identifiers)
    assert export["identity_decisions"] and export["requests"] == []

    # A second export lists the first request among the person's earlier ones.
    second = (
        await platform.governance.RequestAccess(
            pb.RequestAccessRequest(subject=ref(USER, "ana")), metadata=ADMIN
        )
    ).request
    again: dict[str, Any] = json.loads(
        json_format.MessageToJson((await platform.completed(second.request_id)).export)
    )
    assert [r["request_id"] for r in again["requests"]] == [opened.request_id]


async def test_a_suppressed_person_is_dropped_and_counted_until_unsuppressed(platform: Platform) -> None:
    await platform.send(identify("sam", email="sam@example.com"))
    await known(platform, "sam")
    suppressed = (
        await platform.governance.Suppress(pb.SuppressRequest(subject=ref(USER, "sam")), metadata=ADMIN)
    ).request
    assert suppressed.kind == pb.REQUEST_KIND_SUPPRESSION and suppressed.state == pb.REQUEST_STATE_COMPLETED

    async def refused() -> bool:
        results = await platform.send(message(userId="sam", event="Login", messageId=f"m-{uuid.uuid4()}"))
        return results[0].reason == ingest_pb.REJECTION_REASON_SUPPRESSED

    await eventually(refused)
    by_anonymous = await platform.send(message(anonymousId="anon-sam", event="Login"))
    assert by_anonymous[0].reason == ingest_pb.REJECTION_REASON_SUPPRESSED  # every identifier of the person
    assert (await platform.send(message(userId="someone-else", event="Login")))[0].status == (
        ingest_pb.MESSAGE_STATUS_ACCEPTED
    )
    lifted = (
        await platform.governance.Unsuppress(
            pb.UnsuppressRequest(subject=ref(EMAIL, "sam@example.com")), metadata=ADMIN
        )
    ).request
    assert lifted.kind == pb.REQUEST_KIND_UNSUPPRESSION

    async def accepted() -> bool:
        results = await platform.send(message(userId="sam", event="Login", messageId=f"m-{uuid.uuid4()}"))
        return results[0].status == ingest_pb.MESSAGE_STATUS_ACCEPTED

    await eventually(accepted)


async def test_an_erasure_waiting_for_a_service_stays_open_and_is_not_opened_twice(
    platform: Platform,
) -> None:
    await platform.send(identify("eve", email="eve@example.com"))
    await known(platform, "eve")
    request = pb.RequestErasureRequest(subject=ref(USER, "eve"), regulation="ccpa")
    first = (await platform.governance.RequestErasure(request, metadata=ADMIN)).request
    assert first.regulation == "ccpa"
    assert first.due_time.ToDatetime() - first.create_time.ToDatetime() == timedelta(days=45)

    async def waiting_for_activation() -> bool:
        steps = {s.name for s in (await platform.request(first.request_id)).steps}
        return {"keys_destroyed", "announced", "purged:ingest", "purged:identity", "purged:segments"} <= steps

    await eventually(waiting_for_activation)
    now = await platform.request(first.request_id)
    assert now.state == pb.REQUEST_STATE_IN_PROGRESS and "log_erased" not in {s.name for s in now.steps}
    again = (
        await platform.governance.RequestErasure(
            pb.RequestErasureRequest(subject=ref(EMAIL, "eve@example.com")), metadata=ADMIN
        )
    ).request
    assert again.request_id == first.request_id
    listed = await platform.governance.ListRequests(
        pb.ListRequestsRequest(state=pb.REQUEST_STATE_IN_PROGRESS), metadata=ADMIN
    )
    assert [r.request_id for r in listed.requests] == [first.request_id]


async def test_requests_past_their_deadline_are_listed_as_overdue(platform: Platform) -> None:
    # A request received 40 days ago (as governance records one) that is still open, or completed only now.
    old = datetime.now(UTC) - timedelta(days=40)
    late = ErasureRequested(
        request_id="late-one", subject_ids=("0" * 32,), identifier_types=("user_id",), requested_at=old
    )
    await platform.log.append(
        streams.request_stream("late-one"), [late.to_new_event(EventMetadata(actor="admin"))]
    )
    await platform.send(identify("fresh"))
    await known(platform, "fresh")
    fresh = (
        await platform.governance.RequestAccess(
            pb.RequestAccessRequest(subject=ref(USER, "fresh")), metadata=ADMIN
        )
    ).request

    async def listed() -> bool:
        reply = await platform.governance.ListRequests(
            pb.ListRequestsRequest(overdue_only=True), metadata=ADMIN
        )
        return [r.request_id for r in reply.requests] == ["late-one"] and reply.requests[0].overdue

    await eventually(listed)
    assert not (await platform.completed(fresh.request_id)).overdue
    every = await platform.governance.ListRequests(
        pb.ListRequestsRequest(page={"page_size": 1}), metadata=ADMIN
    )
    assert len(every.requests) == 1 and every.page.next_page_token
    rest = await platform.governance.ListRequests(
        pb.ListRequestsRequest(page={"page_size": 10, "page_token": every.page.next_page_token}),
        metadata=ADMIN,
    )
    assert {r.request_id for r in [*every.requests, *rest.requests]} == {"late-one", fresh.request_id}


@pytest.mark.parametrize(
    ("call", "sent", "field"),
    [
        ("RequestAccess", pb.RequestAccessRequest(), "subject"),
        ("RequestAccess", pb.RequestAccessRequest(subject=ref(USER, "x"), regulation="lgpd"), "regulation"),
        (
            "RequestErasure",
            pb.RequestErasureRequest(subject=ref(USER, "x"), external_reference="jane@example.com"),
            "external_reference",
        ),
        ("RequestErasure", pb.RequestErasureRequest(subject=ref(EMAIL, "  ")), "subject.identifier.value"),
        ("GetRequest", pb.GetRequestRequest(), "request_id"),
        ("GetRequest", pb.GetRequestRequest(request_id="a@b c"), "request_id"),
        ("ListRequests", pb.ListRequestsRequest(page={"page_token": "nonsense"}), "page.page_token"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    platform: Platform, call: str, sent: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(platform.governance, call)(sent, metadata=ADMIN)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in {path for path, _ in field_violations(refused.value)}


async def test_unknown_requests_and_profiles_are_not_found_and_every_call_needs_the_admin_token(
    platform: Platform,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await platform.governance.GetRequest(pb.GetRequestRequest(request_id="nope"), metadata=ADMIN)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    unknown = identity_pb2.ProfileRef(profile_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as no_profile:
        await platform.governance.RequestErasure(pb.RequestErasureRequest(subject=unknown), metadata=ADMIN)
    assert no_profile.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as writer:
        await platform.governance.ListRequests(pb.ListRequestsRequest(), metadata=WRITE)
    assert writer.value.code() == grpc.StatusCode.PERMISSION_DENIED
