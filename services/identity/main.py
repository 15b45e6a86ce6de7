"""Composition root of identity: settings → adapters → servicer → server."""

from __future__ import annotations

from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.identity.grpc_api import SERVICE, IdentityServicer


async def build(settings: Settings) -> ServiceApp:
    """Wire the identity service for these settings."""
    add = identity_service_pb2_grpc.add_IdentityServiceServicer_to_server
    return ServiceApp(name="identity", servicers=[(add, IdentityServicer(), SERVICE.full_name)])
