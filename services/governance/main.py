"""Composition root of governance: settings → adapters → servicer → server."""

from __future__ import annotations

from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.governance.grpc_api import SERVICE, GovernanceServicer


async def build(settings: Settings) -> ServiceApp:
    """Wire the governance service for these settings."""
    add = governance_service_pb2_grpc.add_GovernanceServiceServicer_to_server
    return ServiceApp(name="governance", servicers=[(add, GovernanceServicer(), SERVICE.full_name)])
