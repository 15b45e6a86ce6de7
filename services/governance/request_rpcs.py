"""gRPC edge of data subject requests: RequestAccess, RequestErasure, Suppress, Unsuppress, GetRequest, ListRequests."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2

from cdp.common.v1 import identity_pb2
from cdp.errors import InvalidInput
from cdp.governance.v1 import governance_service_pb2 as pb
from cdp.runtime import paging
from cdp.runtime.auth import current_principal
from services.governance.application import Opened, RequestDesk
from services.governance.convert import actor_message, timestamp
from services.governance.directory import TYPE_NAMES, PersonIdentifier
from services.governance.domain.requests import DEADLINES, DEFAULT_REGULATION, Kind, Request, State, Step

KINDS = {
    Kind.ACCESS: pb.REQUEST_KIND_ACCESS,
    Kind.ERASURE: pb.REQUEST_KIND_ERASURE,
    Kind.SUPPRESSION: pb.REQUEST_KIND_SUPPRESSION,
    Kind.UNSUPPRESSION: pb.REQUEST_KIND_UNSUPPRESSION,
}
KIND_OF = {number: kind for kind, number in KINDS.items()}
STATES = {
    State.PENDING: pb.REQUEST_STATE_PENDING,
    State.IN_PROGRESS: pb.REQUEST_STATE_IN_PROGRESS,
    State.COMPLETED: pb.REQUEST_STATE_COMPLETED,
}
STATE_OF = {number: state for state, number in STATES.items()}
TYPE_ENUMS = {name: number for number, name in TYPE_NAMES.items()}
MAX_REFERENCE = 200
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""What a request id can look like (it names the `dsr-` stream)."""
TOKEN_KIND = "requests"


class RequestRpcs:
    """The request half of `cdp.governance.v1.GovernanceService`."""

    def __init__(self, desk: RequestDesk) -> None:
        self._desk = desk

    async def RequestAccess(self, request: pb.RequestAccessRequest, context: Any) -> pb.RequestAccessResponse:
        """Open an access request; the export is in GetRequest once COMPLETED."""
        opened = await self._desk.request_access(
            _subject(request.subject), _regulation(request.regulation), _reference(request), _actor()
        )
        return pb.RequestAccessResponse(request=_opened(opened))

    async def RequestErasure(
        self, request: pb.RequestErasureRequest, context: Any
    ) -> pb.RequestErasureResponse:
        """Open an erasure request (the same person's open one is returned instead of a second)."""
        opened = await self._desk.request_erasure(
            _subject(request.subject),
            _regulation(request.regulation),
            _reference(request),
            request.suppress,
            _actor(),
        )
        return pb.RequestErasureResponse(request=_opened(opened))

    async def Suppress(self, request: pb.SuppressRequest, context: Any) -> pb.SuppressResponse:
        """Suppress the person: ingest drops their new messages, counted, until unsuppressed."""
        opened = await self._desk.suppress(_subject(request.subject), _reference(request), _actor())
        return pb.SuppressResponse(request=_opened(opened))

    async def Unsuppress(self, request: pb.UnsuppressRequest, context: Any) -> pb.UnsuppressResponse:
        """Lift the person's suppressions."""
        opened = await self._desk.unsuppress(_subject(request.subject), _reference(request), _actor())
        return pb.UnsuppressResponse(request=_opened(opened))

    async def GetRequest(self, request: pb.GetRequestRequest, context: Any) -> pb.GetRequestResponse:
        """One request with its steps; a completed access request with its export."""
        request_id = request.request_id.strip()
        if not request_id:
            raise InvalidInput.field("request_id", "is required")
        if not REQUEST_ID.match(request_id):
            raise InvalidInput.field("request_id", "is not a request id (letters, digits, _.-; at most 128)")
        found, export = await self._desk.get(request_id)
        message = request_message(found)
        if export is not None:
            message.export.update(export)
        return pb.GetRequestResponse(request=message)

    async def ListRequests(self, request: pb.ListRequestsRequest, context: Any) -> pb.ListRequestsResponse:
        """Requests, most recent first, by kind, state, time received, or overdue."""
        kind = KIND_OF.get(request.kind) if request.kind else None
        if request.kind and kind is None:
            raise InvalidInput.field("kind", "is not a known request kind")
        state = STATE_OF.get(request.state) if request.state else None
        if request.state and state is None:
            raise InvalidInput.field("state", "is not a request state this service sets")
        since, until = _range(request)
        size = paging.page_size(request.page.page_size)
        token = paging.decode_token(request.page.page_token, TOKEN_KIND)
        after = None
        if token:
            at, _, request_id = token.partition("|")
            if not at.isdigit() or not request_id:
                raise InvalidInput.field("page.page_token", "is not a token this service issued")
            after = (int(at), request_id)
        found = await self._desk.page(
            kind=kind,
            state=state,
            since=since,
            until=until,
            overdue_at=datetime.now(UTC) if request.overdue_only else None,
            size=size,
            after=after,
        )
        reply = pb.ListRequestsResponse(requests=[request_message(r) for r in found.requests])
        if found.next_token:
            reply.page.next_page_token = paging.encode_token(TOKEN_KIND, found.next_token)
        return reply


def request_message(
    request: Request, identifiers: list[identity_pb2.Identifier] | None = None
) -> pb.SubjectRequest:
    """A request as the API shows it (identifiers by type only unless given in full)."""
    message = pb.SubjectRequest(
        request_id=request.request_id,
        kind=KINDS[request.kind],
        profile_id=request.profile_id,
        state=STATES[request.state],
        steps=[_step(step) for step in request.steps.values()],
        external_reference=request.external_reference,
        regulation=request.regulation,
        overdue=request.overdue(datetime.now(UTC)),
    )
    message.identifiers.extend(
        identifiers if identifiers is not None else [_typed(t) for t in request.identifier_types]
    )
    message.requested_by.CopyFrom(actor_message(request.actor))
    message.create_time.CopyFrom(timestamp(request.requested_at))
    message.due_time.CopyFrom(timestamp(request.due_at))
    if request.completed_at is not None:
        message.complete_time.CopyFrom(timestamp(request.completed_at))
    if request.receipt:
        receipt = struct_pb2.Struct()
        receipt.update(dict(request.receipt))
        message.receipt.CopyFrom(receipt)
    return message


def _opened(opened: Opened) -> pb.SubjectRequest:
    return request_message(opened.request, [_identifier(i) for i in opened.person.identifiers])


def _identifier(identifier: PersonIdentifier) -> identity_pb2.Identifier:
    if identifier.type.startswith("external:"):
        return identity_pb2.Identifier(
            type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL,
            value=identifier.value,
            namespace=identifier.type.removeprefix("external:"),
        )
    return identity_pb2.Identifier(type=TYPE_ENUMS[identifier.type], value=identifier.value)


def _typed(identifier_type: str) -> identity_pb2.Identifier:
    if identifier_type.startswith("external:"):
        return identity_pb2.Identifier(
            type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace=identifier_type.removeprefix("external:")
        )
    return identity_pb2.Identifier(
        type=TYPE_ENUMS.get(identifier_type, identity_pb2.IDENTIFIER_TYPE_UNSPECIFIED)
    )


def _step(step: Step) -> pb.RequestStep:
    message = pb.RequestStep(
        name=step.name,
        state=pb.REQUEST_STATE_COMPLETED if step.completed_at else pb.REQUEST_STATE_FAILED,
        detail=step.detail or (f"attempt {step.attempts}: {step.error}" if step.error else ""),
    )
    if step.completed_at is not None:
        message.complete_time.CopyFrom(timestamp(step.completed_at))
    return message


def _subject(ref: identity_pb2.ProfileRef) -> identity_pb2.ProfileRef:
    if ref.WhichOneof("ref") is None:
        raise InvalidInput.field("subject", "is required (a profile_id or an identifier)")
    return ref


def _regulation(text: str) -> str:
    regulation = text.strip().lower() or DEFAULT_REGULATION
    if regulation not in DEADLINES:
        raise InvalidInput.field("regulation", f"must be one of {sorted(DEADLINES)}")
    return regulation


def _reference(request: Any) -> str:
    reference = str(request.external_reference).strip()
    if len(reference) > MAX_REFERENCE:
        raise InvalidInput.field("external_reference", f"must be at most {MAX_REFERENCE} characters")
    if "@" in reference:
        raise InvalidInput.field(
            "external_reference", "must not be an e-mail address (it is kept after erasure)"
        )
    return reference


def _range(request: pb.ListRequestsRequest) -> tuple[datetime | None, datetime | None]:
    since = request.time_range.start.ToDatetime(UTC) if request.time_range.HasField("start") else None
    until = request.time_range.end.ToDatetime(UTC) if request.time_range.HasField("end") else None
    if since is not None and until is not None and until <= since:
        raise InvalidInput.field("time_range.end", "must be after start")
    return since, until


def _actor() -> str:
    return current_principal.get().actor
