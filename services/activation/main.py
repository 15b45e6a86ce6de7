"""Composition root of activation: settings → adapters → servicer → server."""

from __future__ import annotations

from cdp.activation.v1 import activation_service_pb2_grpc
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.activation.grpc_api import SERVICE, ActivationServicer


async def build(settings: Settings) -> ServiceApp:
    """Wire the activation service for these settings."""
    add = activation_service_pb2_grpc.add_ActivationServiceServicer_to_server
    return ServiceApp(name="activation", servicers=[(add, ActivationServicer(), SERVICE.full_name)])
