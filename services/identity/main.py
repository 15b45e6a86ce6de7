"""Composition root of identity: settings → adapters → resolver, use cases, servicer → server."""

from __future__ import annotations

import asyncio

from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime import resources
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.identity.application import IdentityApp
from services.identity.grpc_api import SERVICE, IdentityServicer
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

    async def stop() -> None:
        await store.close()
        await asyncio.to_thread(keyring.close)
        engine.dispose()

    add = identity_service_pb2_grpc.add_IdentityServiceServicer_to_server
    service = ServiceApp(
        name="identity",
        servicers=[
            (add, IdentityServicer(app, max_message_bytes=settings.max_message_bytes), SERVICE.full_name)
        ],
        on_stop=[stop],
        reactors=[resolver.reactor],
        dependencies=resources.dependencies(store, engine),
    )
    return service, resolver
