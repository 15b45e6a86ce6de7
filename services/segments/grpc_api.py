"""gRPC edge of segments: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

from cdp.runtime.placeholders import with_placeholders
from cdp.segments.v1 import segments_service_pb2, segments_service_pb2_grpc

SERVICE = segments_service_pb2.DESCRIPTOR.services_by_name["SegmentsService"]

CAPABILITIES = {method.name: "audiences and computed traits (issue: Segments)" for method in SERVICE.methods}


class SegmentsServicer(
    with_placeholders(segments_service_pb2_grpc.SegmentsServiceServicer, SERVICE, CAPABILITIES)  # type: ignore[misc]
):
    """The `cdp.segments.v1.SegmentsService` implementation."""
