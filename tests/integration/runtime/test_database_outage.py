"""A PostgreSQL database made unreachable for 10 s while the shared server keeps running, under traffic.

Ingest (gRPC and HTTP) and identity run on loopback over their own database, holding the event log, the read
models and the keyring. The outage is `ALTER DATABASE … ALLOW_CONNECTIONS false` and every session of it
terminated, so pooled connections break and new ones are refused. Throughout, clients must get UNAVAILABLE /
503 with Retry-After within the bound (never INTERNAL, UNKNOWN or a 500), health must say NOT_SERVING, and
once the database is back the services must serve again by themselves; every batch a client retried is stored
exactly once. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from cdp.common.v1 import identity_pb2 as identifier_pb2
from cdp.eventlog import open_event_store
from cdp.eventlog.port import EventFilter
from cdp.identity.v1 import identity_service_pb2 as identity_pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.ingest.v1 import ingest_service_pb2 as ingest_pb
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.identity.main import build as build_identity
from services.ingest.application import message_event_id
from tests.integration.identity.conftest import ADMIN, POSTGRES
from tests.integration.ingest.conftest import WRITE_KEY, message, settings_for
from tests.integration.ingest.test_http_load import WEB_KEY, HttpIngest, basic, running_http_ingest

pytestmark = pytest.mark.postgres

OUTAGE_SECONDS = 10.0
SOURCE = "web"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def bound(settings: Settings) -> float:
    """How long a call may take during the outage: the dependency timeout, and generous room for a loaded
    machine (the figures printed show the real latencies, well under it)."""
    return settings.dependency_timeout_seconds + 6.0


@asynccontextmanager
async def own_database() -> AsyncIterator[tuple[str, str]]:
    """A new database on the shared server (name, URL), with a schema per service's read models; dropped after."""
    name = f"cdp_outage_{uuid.uuid4().hex[:10]}"
    target = urlsplit(POSTGRES)
    url = target._replace(path=f"/{name}").geturl()
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for service in ("ingest", "identity"):
                conn.execute(f"CREATE SCHEMA rm_{service}".encode())
        yield name, url
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true".encode())
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def make_unreachable(name: str) -> None:
    """Refuse new connections to the database and end every session it has; the server keeps running."""
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false".encode())
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def make_reachable(name: str) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true".encode())


@dataclass
class Tally:
    """What the clients saw: status → latencies, by call."""

    seen: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, call: str, status: str, seconds: float) -> None:
        self.seen.setdefault(call, {}).setdefault(status, []).append(seconds)

    def lines(self) -> list[str]:
        return [
            f"  {call}: {status} x{len(times)}, max {max(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s"
            for call, statuses in sorted(self.seen.items())
            for status, times in sorted(statuses.items())
        ]


@dataclass
class Cluster:
    http: HttpIngest
    identity: identity_service_pb2_grpc.IdentityServiceAsyncStub
    health: dict[str, health_pb2_grpc.HealthAsyncStub]
    settings: Settings
    tally: Tally = field(default_factory=Tally)
    acknowledged: set[str] = field(default_factory=set)
    refused: list[list[dict[str, Any]]] = field(default_factory=list)

    async def send(self, batch: list[dict[str, Any]], phase: str) -> int:
        """POST one batch over HTTP; remember it as acknowledged or refused. Returns the status."""
        started = time.perf_counter()
        body = json.dumps({"batch": batch}).encode()
        headers = {"Content-Type": "application/json", **basic(WEB_KEY)}
        async with self.http.http.post(f"{self.http.url}/v1/batch", data=body, headers=headers) as response:
            status = response.status
            retry_after = response.headers.get("Retry-After")
        self.tally.add(f"{phase} HTTP /v1/batch", str(status), time.perf_counter() - started)
        if status == 200:
            self.acknowledged.update(item["messageId"] for item in batch)
        else:
            assert status == 503, f"HTTP {status} during the outage"
            assert retry_after is not None and int(retry_after) >= 1, "503 without Retry-After"
            self.refused.append(batch)
        return status

    async def grpc_call(self, name: str, call: Callable[[], Awaitable[Any]], phase: str) -> grpc.StatusCode:
        started = time.perf_counter()
        try:
            await call()
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            assert code == grpc.StatusCode.UNAVAILABLE, f"{name}: {code.name} {error.details()}"
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            assert status is not None, f"{name}: UNAVAILABLE without a rich status"
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details), (
                f"{name}: UNAVAILABLE without RetryInfo"
            )
        self.tally.add(f"{phase} {name}", code.name, time.perf_counter() - started)
        return code

    async def health_of(self, service: str) -> int:
        try:
            reply = await self.health[service].Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError:
            return -1
        return int(reply.status)

    async def http_health(self) -> int:
        async with self.http.http.get(f"{self.http.url}/health") as response:
            return response.status

    def calls(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        user = identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_USER_ID, value="person-0")
        ref = identifier_pb2.ProfileRef(identifier=user)
        return {
            "gRPC ingest Batch": lambda: self.http.ingest.stub.Batch(
                ingest_pb.BatchRequest(messages=[message(userId="grpc-person", event="Probe")]),
                metadata=WRITE_KEY,
                timeout=60,
            ),
            "gRPC identity GetProfile": lambda: self.identity.GetProfile(
                identity_pb.GetProfileRequest(profile=ref), metadata=ADMIN, timeout=60
            ),
            "gRPC identity ListProfiles": lambda: self.identity.ListProfiles(
                identity_pb.ListProfilesRequest(), metadata=ADMIN, timeout=60
            ),
        }


def batch_of(tag: str, count: int = 20, person: str = "person") -> list[dict[str, Any]]:
    return [
        {
            "type": "identify",
            "messageId": f"{tag}-{n}",
            "userId": f"{person}-{n % 7}",
            "traits": {"plan": "pro", "n": n},
        }
        for n in range(count)
    ]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Cluster, str, str]]:
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    async with own_database() as (name, url):
        settings = replace(
            settings_for(tmp_path, CDP_HTTP_PORT="0"),
            event_store=f"{url}?schema=eventlog",
            read_model_url=f"{url}?options=-csearch_path%3Drm_{{service}}",
            keyring_url=url,
        )
        async with running_http_ingest(tmp_path, settings=settings) as http:
            identity = GrpcServer(await build_identity(settings), settings, port=0)
            await identity.start()
            try:
                async with grpc.aio.insecure_channel(identity.address) as channel:
                    ingest_channel = http.ingest.server.address
                    async with grpc.aio.insecure_channel(ingest_channel) as ingest_health:
                        yield (
                            Cluster(
                                http,
                                identity_service_pb2_grpc.IdentityServiceStub(channel),
                                {
                                    "ingest": health_pb2_grpc.HealthStub(ingest_health),
                                    "identity": health_pb2_grpc.HealthStub(channel),
                                },
                                settings,
                            ),
                            name,
                            url,
                        )
            finally:
                await identity.stop()


async def until(probe: Callable[[], Awaitable[bool]], what: str, within: float) -> float:
    """Poll `probe` until it holds; the seconds it took. Fails naming `what` after `within` seconds."""
    started = time.monotonic()
    while not await probe():
        assert time.monotonic() - started < within, f"not within {within:.0f} s: {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_database_outage_fails_fast_reports_not_serving_loses_nothing_and_recovers_alone(
    cluster: tuple[Cluster, str, str],
) -> None:
    c, name, url = cluster
    limit = bound(c.settings)
    for n in range(3):
        assert await c.send(batch_of(f"before-{n}"), "before") == 200
    await until(lambda: _has_profile(c, "person-0"), "identity followed the first batches", 60)
    for call_name, call in c.calls().items():
        await until(lambda call=call: _ok(call), f"{call_name} answers before the outage", 60)  # type: ignore[misc]
    for service in c.health:
        assert await c.health_of(service) == SERVING, service

    make_unreachable(name)
    started = time.monotonic()
    not_serving: dict[str, float] = {}
    rounds = {"HTTP": 0, "gRPC": 0}

    async def http_client() -> None:
        while time.monotonic() - started < OUTAGE_SECONDS:
            await c.send(batch_of(f"during-{rounds['HTTP']}", person=f"late-{rounds['HTTP']}"), "outage")
            rounds["HTTP"] += 1
            await asyncio.sleep(0.2)  # pacing the client, not waiting for anything

    async def grpc_client() -> None:
        while time.monotonic() - started < OUTAGE_SECONDS:
            await asyncio.gather(*(c.grpc_call(n, call, "outage") for n, call in c.calls().items()))
            rounds["gRPC"] += 1
            await asyncio.sleep(0.2)

    async def health_watcher() -> None:
        while time.monotonic() - started < OUTAGE_SECONDS:
            for service in c.health:
                if service not in not_serving and await c.health_of(service) == NOT_SERVING:
                    not_serving[service] = time.monotonic() - started
            if "ingest HTTP" not in not_serving and await c.http_health() == 503:
                not_serving["ingest HTTP"] = time.monotonic() - started
            await asyncio.sleep(0.1)

    await asyncio.gather(http_client(), grpc_client(), health_watcher())
    make_reachable(name)
    restored = time.monotonic()

    assert set(not_serving) == {"ingest", "identity", "ingest HTTP"}, (
        f"health said NOT_SERVING only for {not_serving}"
    )
    refused_during = len(c.refused)
    resumed: dict[str, float] = {}
    resumed["HTTP /v1/batch"] = await until(lambda: _retried(c), "ingest took the refused batches again", 60)
    for call_name, call in c.calls().items():
        resumed[call_name] = await until(lambda call=call: _ok(call), f"{call_name} answered again", 60)  # type: ignore[misc]
    for service in c.health:
        resumed[f"{service} health SERVING"] = await until(
            lambda service=service: _serving(c, service),  # type: ignore[misc]
            f"{service} reported SERVING again by itself",
            60,
        )
    resumed["ingest HTTP /health 200"] = await until(lambda: _http_serving(c), "HTTP /health 200 again", 60)
    last = f"late-{rounds['HTTP'] - 1}-0"
    resumed["identity followed the retried batches"] = await until(
        lambda: _has_profile(c, last), f"identity has the profile of {last}", 60
    )
    elapsed_since_restore = time.monotonic() - restored

    stored = await _stored_event_ids(url)
    expected = {message_event_id(SOURCE, message_id) for message_id in c.acknowledged}
    lost = expected - set(stored)
    doubled = len(stored) - len(set(stored))
    print(
        f"\ndatabase outage of {OUTAGE_SECONDS:.0f} s (dependency timeout {c.settings.dependency_timeout_seconds:g} s,"
        f" bound {limit:g} s): {rounds['HTTP']} HTTP and {rounds['gRPC']} gRPC rounds, {refused_during} batches refused and retried;"
        f" acknowledged {len(c.acknowledged)}, stored {len(set(stored) & expected)}, lost {len(lost)},"
        f" doubled {doubled}"
    )
    print(*c.tally.lines(), sep="\n")
    print("  NOT_SERVING after: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(not_serving.items())))
    print("  back after restore: " + ", ".join(f"{k} {v:.2f} s" for k, v in resumed.items()))
    assert refused_during > 0, "the outage refused nothing: it did not happen"
    for called, statuses in c.tally.seen.items():
        for status, times in statuses.items():
            assert max(times) < limit, (
                f"{called} answered {status} after {max(times):.2f} s (bound {limit} s)"
            )
    assert not lost, f"{len(lost)} acknowledged messages are not in the log"
    assert doubled == 0
    assert elapsed_since_restore < 60


async def _ok(call: Callable[[], Awaitable[Any]]) -> bool:
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{error.code().name}: {error.details()}"
        return False
    return True


async def _retried(c: Cluster) -> bool:
    """Send every refused batch again (the same message ids, as an SDK retries); True once all got 200."""
    pending, c.refused = c.refused, []
    for batch in pending:
        await c.send(batch, "after")
    return not c.refused


async def _serving(c: Cluster, service: str) -> bool:
    return bool(await c.health_of(service) == SERVING)


async def _http_serving(c: Cluster) -> bool:
    return await c.http_health() == 200


async def _has_profile(c: Cluster, user_id: str) -> bool:
    user = identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_USER_ID, value=user_id)
    request = identity_pb.GetProfileRequest(profile=identifier_pb2.ProfileRef(identifier=user))
    try:
        await c.identity.GetProfile(request, metadata=ADMIN, timeout=60)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, f"{error.code().name}: {error.details()}"
        return False
    return True


async def _stored_event_ids(url: str) -> list[uuid.UUID]:
    log = open_event_store(f"{url}?schema=eventlog")
    try:
        events = await log.read_all(filter=EventFilter(event_types=("MessageCollected",)))
    finally:
        await log.close()
    return [event.id for event in events]
