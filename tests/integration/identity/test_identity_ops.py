"""Identity's reactor seen from outside: `cdp.ops.v1.OpsService` on the real server, and a poison message that
is parked instead of stopping identity for everyone behind it."""

from __future__ import annotations

import os
from datetime import timedelta

import grpc
import pytest

from cdp.eventlog import NewEvent
from cdp.events import EventMetadata, EventParked, from_recorded
from cdp.events.streams import parked_stream, subject_stream
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.ops.v1 import ops_service_pb2, ops_service_pb2_grpc
from tests.integration.identity.conftest import ADMIN, Harness
from tests.integration.identity.test_identity_grpc import T0, USER, by


async def server_status(h: Harness) -> ops_service_pb2.GetServerStatusResponse:
    async with grpc.aio.insecure_channel(h.server.address) as channel:
        stub = ops_service_pb2_grpc.OpsServiceStub(channel)
        return await stub.GetServerStatus(ops_service_pb2.GetServerStatusRequest(), metadata=ADMIN)


async def test_ops_service_shows_the_resolver_caught_up(harness: Harness) -> None:
    await harness.collect("identify", at=T0, userId="u-1", traits={"email": "a@x.io"})
    await harness.settle()
    status = await server_status(harness)
    assert (status.service, status.pid) == ("identity", os.getpid())
    [resolver] = status.reactors
    assert resolver.name == "identity-resolver"
    assert resolver.state == ops_service_pb2.REACTOR_STATE_LIVE
    assert resolver.lag == 0 and resolver.position >= 1 and resolver.parked == 0
    async with grpc.aio.insecure_channel(harness.server.address) as channel:
        stub = ops_service_pb2_grpc.OpsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetServerStatus(ops_service_pb2.GetServerStatusRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_message_identity_cannot_read_is_parked_and_the_ones_after_it_are_resolved(
    harness: Harness,
) -> None:
    await harness.collect("identify", at=T0, userId="before", traits={"email": "b@x.io"})
    stream = subject_stream(harness.ids("user_id", "broken"))
    broken = NewEvent(
        "MessageCollected",
        b'{"message_id": "m-1", "not": "a message"}',
        EventMetadata(actor="system").to_mapping(1),
    )
    await harness.store.append(stream, [broken])
    await harness.collect(
        "identify", at=T0 + timedelta(minutes=1), userId="after", traits={"email": "c@x.io"}
    )
    await harness.settle()

    for user in ("before", "after"):
        found = await harness.stub.GetProfile(pb.GetProfileRequest(profile=by(USER, user)), metadata=ADMIN)
        assert found.profile.profile_id
    [parked] = [from_recorded(r) for r in await harness.store.read_stream(parked_stream("identity-resolver"))]
    assert isinstance(parked, EventParked)
    assert (parked.event_id, parked.event_type) == (str(broken.id), "MessageCollected")
    assert parked.error_type == "EventCatalogError"
    [resolver] = (await server_status(harness)).reactors
    assert (resolver.parked, resolver.lag) == (1, 0)
