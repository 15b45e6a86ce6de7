"""Composition root of ingest: settings → adapters → servicer → server."""

from __future__ import annotations

from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.ingest.grpc_api import ACCESS, SERVICE, IngestServicer


async def build(settings: Settings) -> ServiceApp:
    """Wire the ingest service for these settings."""
    return ServiceApp(
        name="ingest",
        servicers=[
            (ingest_service_pb2_grpc.add_IngestServiceServicer_to_server, IngestServicer(), SERVICE.full_name)
        ],
        access=ACCESS,
    )
