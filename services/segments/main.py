"""Composition root of segments: settings → adapters → evaluator, use cases, servicer → server."""

from __future__ import annotations

import asyncio

import grpc

from cdp.common.v1 import identity_pb2
from cdp.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from cdp.reactor import Reactor
from cdp.reactor.purge import Purges
from cdp.runtime import resources
from cdp.runtime.errors import refusals_passed_on
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from cdp.segments.v1 import segments_service_pb2_grpc
from cdp.sqlengine import create_tables
from services.segments import tables
from services.segments.application import SegmentsApp
from services.segments.grpc_api import SERVICE, ProfileResolver, SegmentsServicer
from services.segments.policy import Segmentation

CLOCK_SECONDS = 5.0
"""How often time alone is given the chance to change memberships (a window passing): well under a minute."""


async def build(settings: Settings) -> ServiceApp:
    """Wire the segments service for these settings; its evaluator and clock run with the server."""
    service, _ = await assemble(settings)
    return service


async def assemble(settings: Settings) -> tuple[ServiceApp, SegmentsApp]:
    """The service, and its use cases (which tests and tools drive directly)."""
    store = resources.event_store(settings)
    keyring = resources.keyring(settings)
    engine = resources.read_model_engine(settings, "segments")
    await asyncio.to_thread(create_tables, tables.metadata, engine)  # queries may come before the first batch
    purges = Purges("segments", Segmentation.name, store, engine, tables.metadata.sorted_tables)
    policy = Segmentation(keyring, engine, purges)
    reactor = Reactor(store, policy, engine, batch_size=1000)
    app = SegmentsApp(store, reactor, policy, engine)
    channel = grpc.aio.insecure_channel(f"{settings.host}:{settings.identity_port}")
    resolve = identity_resolver(channel, settings.admin_token, settings.dependency_timeout_seconds)

    async def stop() -> None:
        await channel.close(None)
        await store.close()
        await asyncio.to_thread(keyring.close)
        engine.dispose()

    async def clock() -> None:
        await app.run_clock(CLOCK_SECONDS)

    add = segments_service_pb2_grpc.add_SegmentsServiceServicer_to_server
    service = ServiceApp(
        name="segments",
        servicers=[(add, SegmentsServicer(app, resolve), SERVICE.full_name)],
        background=[clock],
        on_stop=[stop],
        reactors=[reactor],
        dependencies=resources.dependencies(store, engine),
    )
    return service, app


def identity_resolver(channel: grpc.aio.Channel, token: str, timeout: float) -> ProfileResolver:
    """A profile reference → its live profile id, asked of identity (which owns the graph)."""
    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def resolve(ref: identity_pb2.ProfileRef) -> str:
        request = identity_service_pb2.GetProfileRequest(profile=ref)
        request.read_mask.paths.append("profile_id")
        with refusals_passed_on("profile"):
            reply = await stub.GetProfile(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=max(timeout, 5.0)
            )
        return str(reply.profile.profile_id)

    return resolve
