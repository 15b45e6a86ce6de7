"""Composition root of identity: settings → adapters → resolver, use cases, servicer → server."""

from __future__ import annotations

import asyncio

import grpc

from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime import resources
from cdp.runtime.errors import refusals_passed_on
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from cdp.segments.v1 import segments_service_pb2, segments_service_pb2_grpc
from services.identity.application import IdentityApp
from services.identity.grpc_api import SERVICE, AudienceMembers, IdentityServicer
from services.identity.resolver import Resolver


async def build(settings: Settings) -> ServiceApp:
    """Wire the identity service for these settings; the resolver's reactor runs with the server."""
    app, _ = await assemble(settings)
    return app


async def assemble(settings: Settings) -> tuple[ServiceApp, Resolver]:
    """The service, and its resolver (which tests and tools drive directly)."""
    store = resources.event_store(settings)
    keyring = resources.keyring(settings)
    engine = resources.read_model_engine(settings, "identity")
    hasher = resources.subject_ids(settings)
    resolver = Resolver(store, keyring, hasher, engine)
    await asyncio.to_thread(resolver.resolution.create_tables)
    app = IdentityApp(store, resolver, engine, hasher, keyring)

    channel = grpc.aio.insecure_channel(f"{settings.host}:{settings.segments_port}")

    async def stop() -> None:
        await channel.close(None)
        await store.close()
        await asyncio.to_thread(keyring.close)
        engine.dispose()

    add = identity_service_pb2_grpc.add_IdentityServiceServicer_to_server
    service = ServiceApp(
        name="identity",
        servicers=[
            (
                add,
                IdentityServicer(
                    app,
                    max_message_bytes=settings.max_message_bytes,
                    audience_members=audience_members(channel, settings.admin_token),
                ),
                SERVICE.full_name,
            )
        ],
        on_stop=[stop],
        reactors=[resolver.reactor],
        dependencies=resources.dependencies(store, engine),
    )
    return service, resolver


def audience_members(channel: grpc.aio.Channel, token: str) -> AudienceMembers:
    """An audience's current members, asked of segments (which owns audiences)."""
    stub = segments_service_pb2_grpc.SegmentsServiceStub(channel)

    async def members(audience_id: str) -> frozenset[str]:
        request = segments_service_pb2.ListMembersRequest(audience_id=audience_id, chunk_size=5000)
        found: set[str] = set()
        with refusals_passed_on("filter.audience_id"):
            async for chunk in stub.ListMembers(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
            ):
                found.update(member.profile_id for member in chunk.members)
        return frozenset(found)

    return members
