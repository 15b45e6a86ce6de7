"""gRPC edge of governance: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

from cdp.governance.v1 import governance_service_pb2, governance_service_pb2_grpc
from cdp.runtime.placeholders import with_placeholders

SERVICE = governance_service_pb2.DESCRIPTOR.services_by_name["GovernanceService"]

CAPABILITIES = {
    method.name: "consent, data subject requests, retention and audit (issue: Governance)"
    for method in SERVICE.methods
}


class GovernanceServicer(
    with_placeholders(governance_service_pb2_grpc.GovernanceServiceServicer, SERVICE, CAPABILITIES)  # type: ignore[misc]
):
    """The `cdp.governance.v1.GovernanceService` implementation."""
