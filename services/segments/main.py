"""Composition root of segments: settings → adapters → servicer → server."""

from __future__ import annotations

from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from cdp.segments.v1 import segments_service_pb2_grpc
from services.segments.grpc_api import SERVICE, SegmentsServicer


async def build(settings: Settings) -> ServiceApp:
    """Wire the segments service for these settings."""
    add = segments_service_pb2_grpc.add_SegmentsServiceServicer_to_server
    return ServiceApp(name="segments", servicers=[(add, SegmentsServicer(), SERVICE.full_name)])
