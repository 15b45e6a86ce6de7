"""A real outage: identity over PostgreSQL through a TCP proxy that the test cuts, stalls and restores.

The event log and the read model both go through the proxy, so a read of each answers UNAVAILABLE within a
bounded time while the database is unreachable, and the next call after it comes back succeeds. The durations
are printed (`pytest -s`): the bounds come from `cdp.sqlengine.postgres_timeouts` and the dependency timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime.server import GrpcServer
from cdp.sqlengine import DEPENDENCY_TIMEOUT, LIBPQ_MIN_CONNECT_TIMEOUT
from services.identity.main import build
from tests.integration.identity.conftest import ADMIN, POSTGRES, settings_for
from tests.integration.runtime.tcp_proxy import TcpProxy, postgres_behind_proxy

pytestmark = pytest.mark.postgres

# Generous: the knobs say ~2 s (a pooled connection, then a new one); a loaded machine may add a few seconds,
# never tens.
BOUND = DEPENDENCY_TIMEOUT + max(LIBPQ_MIN_CONNECT_TIMEOUT, DEPENDENCY_TIMEOUT) + 6


@dataclass
class Identity:
    """A running identity server whose database is behind `proxy`."""

    proxy: TcpProxy
    stub: identity_service_pb2_grpc.IdentityServiceAsyncStub

    def reads(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """One read of the event log and one of the read model."""
        return {
            "event log (GetIdentityRules)": lambda: self.stub.GetIdentityRules(
                pb.GetIdentityRulesRequest(), metadata=ADMIN, timeout=120
            ),
            "read model (ListProfiles)": lambda: self.stub.ListProfiles(
                pb.ListProfilesRequest(), metadata=ADMIN, timeout=120
            ),
        }


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[Identity]:
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    async with postgres_behind_proxy(POSTGRES) as database:
        settings = settings_for(
            tmp_path, event_store=database.event_store, read_model_url=database.read_model_url
        )
        server = GrpcServer(await build(settings), settings, port=0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                running = Identity(database.proxy, identity_service_pb2_grpc.IdentityServiceStub(channel))
                for read in running.reads().values():  # the resolver creates the tables as it starts
                    await until_ok(read)
                yield running
        finally:
            await server.stop()


async def until_ok(call: Callable[[], Awaitable[Any]], within: float = 60.0) -> None:
    """Wait until the call succeeds (the server is still starting), for at most `within` seconds."""
    deadline = time.monotonic() + within
    while (await timed(call))[0] != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the call never succeeded"
        await asyncio.sleep(0.05)


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, float]:
    """The status a call ends with, and how long it took."""
    started = time.perf_counter()
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        return error.code(), time.perf_counter() - started
    return grpc.StatusCode.OK, time.perf_counter() - started


@pytest.mark.parametrize("failure", ["cut", "stall"])
async def test_reads_answer_unavailable_within_a_bound_while_the_database_is_unreachable_then_recover(
    identity: Identity, failure: str
) -> None:
    reads = identity.reads()
    for name, read in reads.items():
        assert (await timed(read))[0] == grpc.StatusCode.OK, name
    await getattr(identity.proxy, failure)()
    for attempt in range(2):  # the first call meets broken pooled connections, the second a refusing server
        for name, read in reads.items():
            code, seconds = await timed(read)
            print(f"{failure}: {name} attempt {attempt}: {code.name} in {seconds:.2f} s")
            assert code == grpc.StatusCode.UNAVAILABLE, name
            assert seconds < BOUND, name
    await identity.proxy.restore()
    for name, read in reads.items():
        code, seconds = await timed(read)
        print(f"{failure}: {name} after restore: {code.name} in {seconds:.2f} s")
        assert code == grpc.StatusCode.OK, name


async def test_the_first_call_after_a_blip_succeeds_on_fresh_connections(identity: Identity) -> None:
    reads = identity.reads()
    for read in reads.values():
        assert (await timed(read))[0] == grpc.StatusCode.OK
    await identity.proxy.cut()  # every pooled connection is reset while idle; nobody calls meanwhile
    await identity.proxy.restore()
    for name, read in reads.items():
        code, seconds = await timed(read)
        print(f"blip: {name}: {code.name} in {seconds:.2f} s")
        assert code == grpc.StatusCode.OK, name
