"""gRPC edge of governance: one servicer whose methods hand each request to the half that owns it."""

from __future__ import annotations

from typing import Any

from cdp.governance.v1 import governance_service_pb2 as pb
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.runtime.placeholders import with_placeholders
from services.governance.consent_rpcs import ConsentRpcs
from services.governance.request_rpcs import RequestRpcs

SERVICE = pb.DESCRIPTOR.services_by_name["GovernanceService"]

CAPABILITIES = {
    method.name: "retention policies and the replayable audit (issue: Governance: retention and audit replay)"
    for method in SERVICE.methods
}


class _Governance(governance_service_pb2_grpc.GovernanceServiceServicer):
    """Consent and data subject requests; retention and audit answer UNIMPLEMENTED until their issue."""

    def __init__(self, consent: ConsentRpcs, requests: RequestRpcs) -> None:
        self._consent, self._requests = consent, requests

    async def SetConsent(self, request: pb.SetConsentRequest, context: Any) -> pb.SetConsentResponse:
        """Record consent decisions."""
        return await self._consent.SetConsent(request, context)

    async def GetConsent(self, request: pb.GetConsentRequest, context: Any) -> pb.GetConsentResponse:
        """Consent per purpose, now or as of a past moment."""
        return await self._consent.GetConsent(request, context)

    async def GetConsentHistory(
        self, request: pb.GetConsentHistoryRequest, context: Any
    ) -> pb.GetConsentHistoryResponse:
        """Consent changes, oldest first."""
        return await self._consent.GetConsentHistory(request, context)

    async def RequestAccess(self, request: pb.RequestAccessRequest, context: Any) -> pb.RequestAccessResponse:
        """Open an access request."""
        return await self._requests.RequestAccess(request, context)

    async def RequestErasure(
        self, request: pb.RequestErasureRequest, context: Any
    ) -> pb.RequestErasureResponse:
        """Open an erasure request."""
        return await self._requests.RequestErasure(request, context)

    async def Suppress(self, request: pb.SuppressRequest, context: Any) -> pb.SuppressResponse:
        """Suppress a person."""
        return await self._requests.Suppress(request, context)

    async def Unsuppress(self, request: pb.UnsuppressRequest, context: Any) -> pb.UnsuppressResponse:
        """Lift a suppression."""
        return await self._requests.Unsuppress(request, context)

    async def GetRequest(self, request: pb.GetRequestRequest, context: Any) -> pb.GetRequestResponse:
        """One data subject request."""
        return await self._requests.GetRequest(request, context)

    async def ListRequests(self, request: pb.ListRequestsRequest, context: Any) -> pb.ListRequestsResponse:
        """Data subject requests, most recent first."""
        return await self._requests.ListRequests(request, context)


class GovernanceServicer(with_placeholders(_Governance, SERVICE, CAPABILITIES)):  # type: ignore[misc]
    """The `cdp.governance.v1.GovernanceService` implementation."""
