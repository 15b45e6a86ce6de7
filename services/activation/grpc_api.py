"""gRPC edge of activation: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

from cdp.activation.v1 import activation_service_pb2, activation_service_pb2_grpc
from cdp.runtime.placeholders import with_placeholders

SERVICE = activation_service_pb2.DESCRIPTOR.services_by_name["ActivationService"]

CAPABILITIES = {
    method.name: "destinations, connections and deliveries (issue: Activation)" for method in SERVICE.methods
}


class ActivationServicer(
    with_placeholders(activation_service_pb2_grpc.ActivationServiceServicer, SERVICE, CAPABILITIES)  # type: ignore[misc]
):
    """The `cdp.activation.v1.ActivationService` implementation."""
