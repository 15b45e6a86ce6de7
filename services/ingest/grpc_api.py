"""gRPC edge of ingest: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from cdp.common.v1 import message_pb2
from cdp.errors import FieldViolation, InvalidInput
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.runtime.auth import Access, current_principal
from cdp.runtime.server import method_access
from services.ingest.application import Collector
from services.ingest.config_grpc import ConfigurationApi
from services.ingest.domain.messages import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, InvalidMessage
from services.ingest.domain.outcomes import Outcome, Reason, Status
from services.ingest.domain.plans import ViolationReason

SERVICE = pb.DESCRIPTOR.services_by_name["IngestService"]

# Sources send data with their write key; everything else (catalog, plans) is configuration: admin token.
ACCESS = method_access(
    SERVICE,
    ("Identify", "Track", "Page", "Screen", "Group", "Alias", "Batch", "StreamMessages", "ImportCsv"),
    Access.WRITE_KEY,
)

STREAM_WINDOW = 100
"""Credit announced to streaming producers: unacknowledged messages they may have in flight."""

_TYPES = {
    message_pb2.MESSAGE_TYPE_IDENTIFY: "identify",
    message_pb2.MESSAGE_TYPE_TRACK: "track",
    message_pb2.MESSAGE_TYPE_PAGE: "page",
    message_pb2.MESSAGE_TYPE_SCREEN: "screen",
    message_pb2.MESSAGE_TYPE_GROUP: "group",
    message_pb2.MESSAGE_TYPE_ALIAS: "alias",
}
_REJECTION = {reason: getattr(pb, f"REJECTION_REASON_{reason.name}") for reason in Reason}
_VIOLATION = {reason: getattr(pb, f"VIOLATION_REASON_{reason.name}") for reason in ViolationReason}
_STATUS = {
    Status.ACCEPTED: pb.MESSAGE_STATUS_ACCEPTED,
    Status.DUPLICATE: pb.MESSAGE_STATUS_DUPLICATE,
    Status.REJECTED: pb.MESSAGE_STATUS_REJECTED,
}


_SingleRequest = (
    pb.IdentifyRequest
    | pb.TrackRequest
    | pb.PageRequest
    | pb.ScreenRequest
    | pb.GroupRequest
    | pb.AliasRequest
)


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """The `cdp.ingest.v1.IngestService` implementation: collection here, configuration in `config_grpc`."""

    def __init__(self, collector: Collector, configuration: ConfigurationApi) -> None:
        self._collector = collector
        self._configuration = configuration

    async def ImportCsv(
        self, requests: AsyncIterator[pb.ImportCsvRequest], context: Any
    ) -> pb.ImportCsvResponse:
        return await self._configuration.import_csv(requests)

    async def DefineAttribute(
        self, request: pb.DefineAttributeRequest, context: Any
    ) -> pb.DefineAttributeResponse:
        return await self._configuration.define_attribute(request)

    async def ListAttributes(
        self, request: pb.ListAttributesRequest, context: Any
    ) -> pb.ListAttributesResponse:
        return await self._configuration.list_attributes(request)

    async def PublishTrackingPlan(
        self, request: pb.PublishTrackingPlanRequest, context: Any
    ) -> pb.PublishTrackingPlanResponse:
        return await self._configuration.publish_plan(request)

    async def GetTrackingPlan(
        self, request: pb.GetTrackingPlanRequest, context: Any
    ) -> pb.GetTrackingPlanResponse:
        return await self._configuration.get_plan(request)

    async def ListViolations(
        self, request: pb.ListViolationsRequest, context: Any
    ) -> pb.ListViolationsResponse:
        return await self._configuration.list_violations(request)

    async def Identify(self, request: pb.IdentifyRequest, context: Any) -> pb.IdentifyResponse:
        return pb.IdentifyResponse(result=await self._single(request, "identify"))

    async def Track(self, request: pb.TrackRequest, context: Any) -> pb.TrackResponse:
        return pb.TrackResponse(result=await self._single(request, "track"))

    async def Page(self, request: pb.PageRequest, context: Any) -> pb.PageResponse:
        return pb.PageResponse(result=await self._single(request, "page"))

    async def Screen(self, request: pb.ScreenRequest, context: Any) -> pb.ScreenResponse:
        return pb.ScreenResponse(result=await self._single(request, "screen"))

    async def Group(self, request: pb.GroupRequest, context: Any) -> pb.GroupResponse:
        return pb.GroupResponse(result=await self._single(request, "group"))

    async def Alias(self, request: pb.AliasRequest, context: Any) -> pb.AliasResponse:
        return pb.AliasResponse(result=await self._single(request, "alias"))

    async def Batch(self, request: pb.BatchRequest, context: Any) -> pb.BatchResponse:
        validate_batch(request)
        # The batch's own context and integrations go through the same converter as each message's, so a NaN
        # there is INVALID_ARGUMENT naming the field too.
        defaults = {
            "context": _struct(request.context, "context") if request.HasField("context") else None,
            "integrations": _struct(request.integrations, "integrations")
            if request.HasField("integrations")
            else None,
            "sentAt": request.sent_at.ToJsonString() if request.HasField("sent_at") else None,
        }
        outcomes = await self._collector.collect(
            current_principal.get().source_id,
            [raw_message(message) for message in request.messages],
            defaults=defaults,
            path="messages",
        )
        counts = {status: sum(1 for o in outcomes if o.status is status) for status in Status}
        return pb.BatchResponse(
            results=[result_to_proto(outcome) for outcome in outcomes],
            accepted_count=counts[Status.ACCEPTED],
            duplicate_count=counts[Status.DUPLICATE],
            rejected_count=counts[Status.REJECTED],
        )

    async def StreamMessages(
        self, requests: AsyncIterator[pb.StreamMessagesRequest], context: Any
    ) -> AsyncIterator[pb.StreamMessagesResponse]:
        """Micro-batches whatever the producer has in flight; acknowledges each message in order."""
        source_id = current_principal.get().source_id
        pending: asyncio.Queue[pb.StreamMessagesRequest | None] = asyncio.Queue(maxsize=STREAM_WINDOW)
        reader = asyncio.create_task(_read_into(requests, pending))
        last_sequence = -1
        try:
            while True:
                batch = await _take_available(pending)
                if not batch:
                    break
                for item in batch:
                    if item.sequence <= last_sequence:
                        raise InvalidInput.field(
                            "sequence", f"{item.sequence} does not increase (last {last_sequence})"
                        )
                    last_sequence = item.sequence
                outcomes = await self._collector.collect(
                    source_id,
                    [raw_message(item.message) for item in batch],
                    path="message",
                    indexed=False,
                )
                for item, outcome in zip(batch, outcomes, strict=True):
                    yield pb.StreamMessagesResponse(
                        sequence=item.sequence, result=result_to_proto(outcome, index=0), window=STREAM_WINDOW
                    )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await reader

    async def _single(self, request: _SingleRequest, kind: str) -> pb.MessageResult:
        """One message: a rejection fails the call with INVALID_ARGUMENT naming the fields."""
        [outcome] = await self._collector.collect(
            current_principal.get().source_id,
            [raw_message(request.message)],
            default_type=kind,
            path="message",
            indexed=False,
        )
        if outcome.status is Status.REJECTED and outcome.reason is not Reason.SUPPRESSED:
            violations = outcome.violations or tuple(
                FieldViolation(
                    f"message.{v.field}" if v.field else "message.event", v.description or v.reason.value
                )
                for v in outcome.plan_violations
            )
            reason = outcome.reason.name if outcome.reason else "INVALID_FIELD"
            raise InvalidInput(violations, reason=f"REJECTION_REASON_{reason}")
        return result_to_proto(outcome)


def validate_batch(request: pb.BatchRequest) -> None:
    """Segment's batch limits: at most 2,500 messages and 500 KB; over them, nothing is appended."""
    if not request.messages:
        raise InvalidInput.field("messages", "a batch needs at least one message")
    if len(request.messages) > MAX_BATCH_MESSAGES:
        raise InvalidInput.field(
            "messages", f"{len(request.messages)} messages; a batch may have at most {MAX_BATCH_MESSAGES}"
        )
    size = request.ByteSize()
    if size > MAX_BATCH_BYTES:
        raise InvalidInput.field("messages", f"the batch is {size} bytes; at most {MAX_BATCH_BYTES}")


def raw_message(message: message_pb2.Message) -> dict[str, Any] | InvalidMessage:
    """What the collector takes: the message as JSON, or why it cannot be JSON (the collector rejects it)."""
    try:
        return message_to_json(message)
    except InvalidMessage as error:
        return error


def message_to_json(message: message_pb2.Message) -> dict[str, Any]:
    """The protobuf message in Segment's JSON shape (camelCase keys, ISO-8601 times, lower-case type).

    Written out rather than `json_format.MessageToDict`: this runs for every message, at a third of the cost,
    and a NaN or infinite number is an `InvalidMessage` naming its field instead of an exception.
    """
    document: dict[str, Any] = {}
    kind = _TYPES.get(message.type)
    if kind is not None:
        document["type"] = kind
    for field, key in _TEXT_FIELDS:
        if message.HasField(field):
            document[key] = getattr(message, field)
    for field, key in _OBJECT_FIELDS:
        if message.HasField(field):
            document[key] = _struct(getattr(message, field), key)
    for field, key in _TIME_FIELDS:
        if message.HasField(field):
            document[key] = getattr(message, field).ToJsonString()
    return document


_TEXT_FIELDS = (
    ("message_id", "messageId"),
    ("user_id", "userId"),
    ("anonymous_id", "anonymousId"),
    ("event", "event"),
    ("name", "name"),
    ("category", "category"),
    ("group_id", "groupId"),
    ("previous_id", "previousId"),
)
_OBJECT_FIELDS = (
    ("properties", "properties"),
    ("traits", "traits"),
    ("context", "context"),
    ("integrations", "integrations"),
)
# receivedAt is the server's to set: a client's is ignored, as on the HTTP API.
_TIME_FIELDS = (
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
    ("sent_at", "sentAt"),
)


def _struct(struct: struct_pb2.Struct, path: str) -> dict[str, Any]:
    return {key: _value(value, f"{path}.{key}") for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, path: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            problem = FieldViolation(path, "must be a finite number (JSON has no NaN or Infinity)")
            raise InvalidMessage([problem], Reason.INVALID_FIELD)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value, path)
    if kind == "list_value":
        return [_value(item, f"{path}[{index}]") for index, item in enumerate(value.list_value.values)]
    return None


def result_to_proto(outcome: Outcome, *, index: int | None = None) -> pb.MessageResult:
    """One outcome as the contract's MessageResult."""
    received_at = Timestamp()
    received_at.FromDatetime(outcome.received_at)
    result = pb.MessageResult(
        index=outcome.index if index is None else index,
        message_id=outcome.message_id or "",
        status=_STATUS[outcome.status],
        field_violations=[
            pb.FieldViolation(field=v.field, description=v.description) for v in outcome.violations
        ],
        plan_violations=[
            pb.PlanViolation(
                reason=_VIOLATION[v.reason],
                field=v.field,
                description=v.description,
            )
            for v in outcome.plan_violations
        ],
        received_at=received_at,
    )
    if outcome.reason is not None:
        result.reason = _REJECTION[outcome.reason]
    return result


async def _read_into(
    requests: AsyncIterator[pb.StreamMessagesRequest], queue: asyncio.Queue[pb.StreamMessagesRequest | None]
) -> None:
    """Pull the producer's messages; the bounded queue is the flow control (gRPC stops reading when full)."""
    try:
        async for request in requests:
            await queue.put(request)
    finally:
        await queue.put(None)


async def _take_available(
    queue: asyncio.Queue[pb.StreamMessagesRequest | None],
) -> Sequence[pb.StreamMessagesRequest]:
    """Wait for one message, then take every other one already waiting (the end of stream stops the batch)."""
    first = await queue.get()
    if first is None:
        return []
    batch = [first]
    while not queue.empty():
        item = queue.get_nowait()
        if item is None:
            queue.put_nowait(None)  # keep the end marker for the next call
            break
        batch.append(item)
    return batch
