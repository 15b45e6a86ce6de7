"""gRPC edge of identity: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

from cdp.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from cdp.runtime.placeholders import with_placeholders

SERVICE = identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"]

CAPABILITIES = {
    method.name: "identity resolution and profiles (issue: Identity)" for method in SERVICE.methods
}


class IdentityServicer(
    with_placeholders(identity_service_pb2_grpc.IdentityServiceServicer, SERVICE, CAPABILITIES)  # type: ignore[misc]
):
    """The `cdp.identity.v1.IdentityService` implementation."""
