"""The runtime's edge on a real gRPC server on loopback: health, reflection, auth, error mapping, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import structlog
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import create_engine

from cdp.activation.v1 import activation_service_pb2, activation_service_pb2_grpc
from cdp.common.v1 import identity_pb2, message_pb2, paging_pb2, time_pb2
from cdp.errors import RETRY_AFTER_SECONDS
from cdp.eventlog import EventStoreUnavailable
from cdp.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.keyring.sql import SqlKeyStore
from cdp.runtime.errors import field_violations
from cdp.runtime.placeholders import with_placeholders
from cdp.runtime.server import GrpcServer, ServiceApp
from cdp.runtime.settings import Settings
from cdp.sqlengine import create_sql_engine
from services.activation.main import build as build_activation
from services.ingest.main import build

WRITE_KEY = (("authorization", "Bearer dev-write-key"),)
IDENTITY = identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"]
POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
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
    running = GrpcServer(await build_activation(settings), settings, port=0)
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            activation = activation_service_pb2_grpc.ActivationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await activation.ListDestinations(
                    activation_service_pb2.ListDestinationsRequest(), metadata=ADMIN
                )
    finally:
        await running.stop()
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "destinations, connections and deliveries" in (raised.value.details() or "")


async def test_every_reply_carries_a_request_id(stub: ingest_service_pb2_grpc.IngestServiceAsyncStub) -> None:
    call = stub.Track(a_track(), metadata=(*WRITE_KEY, ("x-request-id", "req-42")))
    await call
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
    failing = stub.Track(a_track(), metadata=(("x-request-id", "req-43"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await failing
    assert ("x-request-id", "req-43") in tuple(await failing.trailing_metadata())


# --- Failures of a dependency, and validation by construction, on a servicer written for these tests ---------


class PlainIdentity(identity_service_pb2_grpc.IdentityServiceServicer):
    """A servicer that never calls validate_request, and whose dependency fails as the test says."""

    def __init__(self) -> None:
        self.dependency: Callable[[], Awaitable[None]] | None = None
        self.calls = 0

    async def GetIdentityRules(
        self, request: identity_service_pb2.GetIdentityRulesRequest, context: Any
    ) -> identity_service_pb2.GetIdentityRulesResponse:
        self.calls += 1
        if self.dependency is not None:
            await self.dependency()
        return identity_service_pb2.GetIdentityRulesResponse()

    async def ListProfiles(
        self, request: identity_service_pb2.ListProfilesRequest, context: Any
    ) -> identity_service_pb2.ListProfilesResponse:
        self.calls += 1
        return identity_service_pb2.ListProfilesResponse()

    async def GetMergeHistory(
        self, request: identity_service_pb2.GetMergeHistoryRequest, context: Any
    ) -> identity_service_pb2.GetMergeHistoryResponse:
        self.calls += 1
        return identity_service_pb2.GetMergeHistoryResponse()


@dataclass
class Plain:
    servicer: PlainIdentity
    stub: identity_service_pb2_grpc.IdentityServiceAsyncStub


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Plain]:
    settings = replace(Settings.from_env({"CDP_DATA_DIR": str(tmp_path)}), grace_seconds=0.5)
    # The methods this servicer does not define answer UNIMPLEMENTED, as a service's unbuilt ones do.
    capabilities = {method.name: "not part of this test" for method in IDENTITY.methods}
    servicer = with_placeholders(PlainIdentity, IDENTITY, capabilities)()  # type: ignore[type-abstract]
    add = identity_service_pb2_grpc.add_IdentityServiceServicer_to_server
    app = ServiceApp(name="identity", servicers=[(add, servicer, IDENTITY.full_name)])
    running = GrpcServer(app, settings, port=0)
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield Plain(servicer, identity_service_pb2_grpc.IdentityServiceStub(channel))
    finally:
        await running.stop()


async def _sqlite_unopenable(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "no-such-folder" / "x.db")


async def _sqlalchemy_locked(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    engine = create_sql_engine(f"sqlite:///{path}", sqlite_pragmas=("busy_timeout=0",))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x INTEGER)")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with engine.connect() as conn, conn.execution_options(sqlite_immediate=True).begin():
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        finally:
            engine.dispose()


async def _sqlite_locked(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x INTEGER)")
        holder.execute("BEGIN EXCLUSIVE")
        with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as waiter:
            waiter.execute("INSERT INTO t VALUES (1)")


async def _pool_checkout_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, max_overflow=0, pool_timeout=0.1)
    try:
        with engine.connect(), engine.connect():
            pass
    finally:
        engine.dispose()


async def _postgres_refused(tmp_path: Path) -> None:
    await psycopg.AsyncConnection.connect(f"postgresql://postgres@127.0.0.1:{closed_port()}/test")


async def _sqlalchemy_postgres_refused(tmp_path: Path) -> None:
    engine = create_sql_engine(f"postgresql://postgres@127.0.0.1:{closed_port()}/test", sqlite_pragmas=())
    try:
        await asyncio.to_thread(engine.connect)
    finally:
        engine.dispose()


async def _keyring_database_down(tmp_path: Path) -> None:
    # The SQL key store's own error when its PostgreSQL is unreachable: a SQLAlchemy OperationalError.
    await asyncio.to_thread(SqlKeyStore, f"postgresql://postgres@127.0.0.1:{closed_port()}/test")


async def _psycopg_pool_timeout(tmp_path: Path) -> None:
    pool = AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{closed_port()}/test", open=False, timeout=0.2
    )
    await pool.open(wait=False)
    try:
        async with pool.connection():
            pass
    finally:
        await pool.close()


async def _event_log_down(tmp_path: Path) -> None:
    raise EventStoreUnavailable("postgres event store: connection refused")


async def _statement_timeout(tmp_path: Path) -> None:
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = 50")
        await conn.execute("SELECT pg_sleep(5)")


async def _asyncio_timeout(tmp_path: Path) -> None:
    async with asyncio.timeout(0.01):
        await asyncio.Event().wait()


async def _upstream_service_down(tmp_path: Path) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{closed_port()}") as channel:
        other = identity_service_pb2_grpc.IdentityServiceStub(channel)
        await other.GetIdentityRules(identity_service_pb2.GetIdentityRulesRequest(), timeout=30)


async def _no_such_table(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "empty.db")) as conn:
        conn.execute("SELECT * FROM missing")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


FAILURES: list[tuple[Callable[[Path], Awaitable[None]], grpc.StatusCode, str]] = [
    (_event_log_down, grpc.StatusCode.UNAVAILABLE, "cdp.eventlog.port.EventStoreUnavailable"),
    (_sqlite_locked, grpc.StatusCode.UNAVAILABLE, "sqlite3.OperationalError"),
    (_sqlite_unopenable, grpc.StatusCode.UNAVAILABLE, "sqlite3.OperationalError"),
    (_sqlalchemy_locked, grpc.StatusCode.UNAVAILABLE, "sqlite3.OperationalError"),
    (_pool_checkout_timeout, grpc.StatusCode.UNAVAILABLE, "sqlalchemy.exc.TimeoutError"),
    (_postgres_refused, grpc.StatusCode.UNAVAILABLE, "psycopg.OperationalError"),
    (_sqlalchemy_postgres_refused, grpc.StatusCode.UNAVAILABLE, "psycopg.OperationalError"),
    (_keyring_database_down, grpc.StatusCode.UNAVAILABLE, "psycopg.OperationalError"),
    (_psycopg_pool_timeout, grpc.StatusCode.UNAVAILABLE, "psycopg_pool.PoolTimeout"),
    (_statement_timeout, grpc.StatusCode.DEADLINE_EXCEEDED, "psycopg.errors.QueryCanceled"),
    (_asyncio_timeout, grpc.StatusCode.DEADLINE_EXCEEDED, "TimeoutError"),
    (_upstream_service_down, grpc.StatusCode.UNAVAILABLE, "grpc.aio._call.AioRpcError"),
]


@pytest.mark.parametrize(
    ("failure", "code", "error_class"), FAILURES, ids=[f.__name__[1:] for f, _, _ in FAILURES]
)
async def test_a_dependency_that_is_down_or_slow_is_unavailable_or_deadline_exceeded_never_internal(
    plain: Plain,
    tmp_path: Path,
    failure: Callable[[Path], Awaitable[None]],
    code: grpc.StatusCode,
    error_class: str,
) -> None:
    plain.servicer.dependency = functools.partial(failure, tmp_path)
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as raised:
        await plain.stub.GetIdentityRules(identity_service_pb2.GetIdentityRulesRequest(), metadata=ADMIN)
    assert raised.value.code() == code
    delay = retry_delay(raised.value)
    if code == grpc.StatusCode.UNAVAILABLE:
        assert delay == RETRY_AFTER_SECONDS
    else:
        assert delay is None
    [line] = [entry for entry in logs if entry["event"] in ("rpc_finished", "rpc_failed")]
    assert (line["event"], line["log_level"], line["code"]) == ("rpc_finished", "warning", code.name)
    assert line["error_class"] == error_class


async def test_a_failure_that_is_not_an_outage_stays_internal_and_is_logged_as_one(
    plain: Plain, tmp_path: Path
) -> None:
    plain.servicer.dependency = functools.partial(_no_such_table, tmp_path)
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as raised:
        await plain.stub.GetIdentityRules(identity_service_pb2.GetIdentityRulesRequest(), metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "missing" not in (raised.value.details() or "")  # the details of a bug stay in the log
    assert [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("rpc_")] == [
        ("rpc_failed", "error")
    ]


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The `google.rpc.RetryInfo` delay of a status, in seconds, if it has one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None


@pytest.mark.parametrize(
    ("call", "fields"),
    [
        ("page_too_large", ["page.page_size"]),
        ("bad_timestamp_in_a_range", ["time_range.start"]),
        ("reversed_range", ["time_range.end"]),
    ],
)
async def test_a_method_that_never_validates_still_rejects_bad_shared_types(
    plain: Plain, call: str, fields: list[str]
) -> None:
    requests: dict[str, Callable[[], Any]] = {
        "page_too_large": lambda: plain.stub.ListProfiles(
            identity_service_pb2.ListProfilesRequest(page=paging_pb2.PageRequest(page_size=5000)),
            metadata=ADMIN,
        ),
        "bad_timestamp_in_a_range": lambda: plain.stub.GetMergeHistory(
            identity_service_pb2.GetMergeHistoryRequest(
                time_range=time_pb2.TimeRange(start=timestamp_pb2.Timestamp(seconds=10, nanos=-1))
            ),
            metadata=ADMIN,
        ),
        "reversed_range": lambda: plain.stub.GetMergeHistory(
            identity_service_pb2.GetMergeHistoryRequest(
                profile=identity_pb2.ProfileRef(profile_id="p-1"),
                time_range=time_pb2.TimeRange(
                    start=timestamp_pb2.Timestamp(seconds=2_000_000),
                    end=timestamp_pb2.Timestamp(seconds=1_000_000),
                ),
            ),
            metadata=ADMIN,
        ),
    }
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await requests[call]()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == fields
    assert plain.servicer.calls == 0  # the servicer never saw the request


async def test_validation_comes_after_authentication(plain: Plain) -> None:
    bad = identity_service_pb2.ListProfilesRequest(page=paging_pb2.PageRequest(page_size=5000))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await plain.stub.ListProfiles(bad)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_each_streamed_message_is_validated_and_named_by_its_index(
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    def item(sequence: int, nanos: int = 0) -> pb.StreamMessagesRequest:
        message = a_track().message
        message.message_id = f"m-{sequence}"
        message.timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=int(time.time()), nanos=nanos))
        return pb.StreamMessagesRequest(sequence=sequence, message=message)

    async def produce() -> AsyncIterator[pb.StreamMessagesRequest]:
        yield item(0)
        yield item(1)
        yield item(2, nanos=-5)  # not a Timestamp at all: it cannot even be written as JSON

    acknowledged: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for reply in stub.StreamMessages(produce(), metadata=WRITE_KEY):
            acknowledged.append(reply.sequence)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == ["stream[2].message.timestamp"]
    assert acknowledged == [0, 1]


async def test_a_batch_judges_each_message_and_refuses_only_a_malformed_timestamp_whole(
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub,
) -> None:
    good, old = a_track().message, a_track().message
    good.message_id, old.message_id = "good", "old"
    old.timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=-3_000_000_000))  # 1874: well-formed, out of range
    reply = await stub.Batch(pb.BatchRequest(messages=[good, old]), metadata=WRITE_KEY)
    assert [r.status for r in reply.results] == [pb.MESSAGE_STATUS_ACCEPTED, pb.MESSAGE_STATUS_REJECTED]
    malformed = a_track().message
    malformed.timestamp.CopyFrom(timestamp_pb2.Timestamp(seconds=0, nanos=2_000_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Batch(pb.BatchRequest(messages=[good, malformed]), metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(raised.value)] == ["messages[1].timestamp"]
