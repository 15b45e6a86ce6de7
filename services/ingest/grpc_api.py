"""gRPC edge of ingest: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

from cdp.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from cdp.runtime.auth import Access
from cdp.runtime.placeholders import with_placeholders
from cdp.runtime.server import method_access

SERVICE = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"]

_COLLECTION = "collection of Segment-spec messages (issue: Ingest)"
_CATALOG = "attribute catalog and CSV onboarding (issue: Ingest)"
_PLANS = "tracking plans (issue: Ingest)"
CAPABILITIES = {
    "Identify": _COLLECTION,
    "Track": _COLLECTION,
    "Page": _COLLECTION,
    "Screen": _COLLECTION,
    "Group": _COLLECTION,
    "Alias": _COLLECTION,
    "Batch": _COLLECTION,
    "StreamMessages": _COLLECTION,
    "ImportCsv": _CATALOG,
    "DefineAttribute": _CATALOG,
    "ListAttributes": _CATALOG,
    "PublishTrackingPlan": _PLANS,
    "GetTrackingPlan": _PLANS,
    "ListViolations": _PLANS,
}

# Sources send data with their write key; everything else (catalog, plans) is configuration: admin token.
ACCESS = method_access(
    SERVICE,
    ("Identify", "Track", "Page", "Screen", "Group", "Alias", "Batch", "StreamMessages", "ImportCsv"),
    Access.WRITE_KEY,
)


class IngestServicer(
    with_placeholders(ingest_service_pb2_grpc.IngestServiceServicer, SERVICE, CAPABILITIES)  # type: ignore[misc]
):
    """The `cdp.ingest.v1.IngestService` implementation."""
