"""The runtime's edge on a real gRPC server on loopback: health, reflection, auth, error mapping, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cdp.common.v1 import message_pb2
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.runtime.errors import field_violations
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from cdp.segments.v1 import segments_service_pb2, segments_service_pb2_grpc
from services.ingest.main import build
from services.segments.main import build as build_segments

WRITE_KEY = (("authorization", "Bearer dev-write-key"),)
ADMIN = (("authorization", "Bearer dev-admin-token"),)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    settings = replace(
        Settings.from_env({"CDP_DATA_DIR": str(tmp_path), "CDP_HTTP_PORT": "0"}), grace_seconds=0.5
    )
    running = GrpcServer(await build(settings), settings, port=0)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def stub(server: GrpcServer) -> AsyncIterator[ingest_service_pb2_grpc.IngestServiceAsyncStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield ingest_service_pb2_grpc.IngestServiceStub(channel)


def a_track() -> pb.TrackRequest:
    return pb.TrackRequest(
        message=message_pb2.Message(type=message_pb2.MESSAGE_TYPE_TRACK, user_id="u1", event="Signed Up")
    )


async def test_health_answers_serving_and_not_serving_while_draining(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "cdp.ingest.v1.IngestService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.health.enter_graceful_shutdown()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_contract(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]))]
    services = [service.name for service in replies[0].list_services_response.service]
    assert "cdp.ingest.v1.IngestService" in services
    assert "grpc.health.v1.Health" in services


async def test_a_call_without_credentials_is_unauthenticated(
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Track(a_track())
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Track(a_track(), metadata=(("authorization", "Bearer wrong"),))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_write_key_cannot_configure(stub: ingest_service_pb2_grpc.IngestServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListAttributes(pb.ListAttributesRequest(), metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_malformed_request_is_invalid_argument_naming_the_field(
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    request = a_track()
    request.message.timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=-3_000_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Track(request, metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == ["message.timestamp"]
    assert "message.timestamp" in (raised.value.details() or "")


async def test_a_capability_not_built_yet_answers_unimplemented_naming_it(tmp_path: Path) -> None:
    settings = replace(
        Settings.from_env({"CDP_DATA_DIR": str(tmp_path), "CDP_HTTP_PORT": "0"}), grace_seconds=0.5
    )
    running = GrpcServer(await build_segments(settings), settings, port=0)
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            segments = segments_service_pb2_grpc.SegmentsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await segments.GetAudience(
                    segments_service_pb2.GetAudienceRequest(audience_id="a"), metadata=ADMIN
                )
    finally:
        await running.stop()
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "audiences and computed traits" in (raised.value.details() or "")


async def test_every_reply_carries_a_request_id(stub: ingest_service_pb2_grpc.IngestServiceAsyncStub) -> None:
    call = stub.Track(a_track(), metadata=(*WRITE_KEY, ("x-request-id", "req-42")))
    await call
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
    failing = stub.Track(a_track(), metadata=(("x-request-id", "req-43"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await failing
    assert ("x-request-id", "req-43") in tuple(await failing.trailing_metadata())
