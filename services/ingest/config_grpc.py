"""gRPC edge of ingest's configuration: plans, catalog, violations and CSV imports (convert, call, convert)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from cdp import payload
from cdp.common.v1 import audit_pb2, identity_pb2, message_pb2, paging_pb2
from cdp.errors import FieldViolation, InvalidInput
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.runtime.auth import current_principal
from services.ingest.config_readmodel import ConfigView, ViolationCount, ViolationFilter
from services.ingest.configuration import AttributeCatalog, CsvImports, TrackingPlans
from services.ingest.domain.catalog import Attribute, AttributeType, Band
from services.ingest.domain.csv_import import (
    AttributeColumn,
    IdentifierColumn,
    IdentifierKind,
    ImportReport,
    ImportSpec,
)
from services.ingest.domain.plans import Verdict, ViolationReason
from services.ingest.domain.tracking_plans import Enforcement, PlannedEvent, TrackingPlan

_MESSAGE_TYPES = {
    message_pb2.MESSAGE_TYPE_IDENTIFY: "identify",
    message_pb2.MESSAGE_TYPE_TRACK: "track",
    message_pb2.MESSAGE_TYPE_PAGE: "page",
    message_pb2.MESSAGE_TYPE_SCREEN: "screen",
    message_pb2.MESSAGE_TYPE_GROUP: "group",
    message_pb2.MESSAGE_TYPE_ALIAS: "alias",
}
_MESSAGE_TYPE_OF = {name: value for value, name in _MESSAGE_TYPES.items()}
_MODES = {
    pb.ENFORCEMENT_MODE_UNSPECIFIED: Verdict.ALLOW,
    pb.ENFORCEMENT_MODE_ALLOW: Verdict.ALLOW,
    pb.ENFORCEMENT_MODE_FLAG: Verdict.FLAG,
    pb.ENFORCEMENT_MODE_BLOCK: Verdict.BLOCK,
}
_MODE_OF = {
    Verdict.ALLOW: pb.ENFORCEMENT_MODE_ALLOW,
    Verdict.FLAG: pb.ENFORCEMENT_MODE_FLAG,
    Verdict.BLOCK: pb.ENFORCEMENT_MODE_BLOCK,
}
_ATTRIBUTE_TYPES = {getattr(pb, f"ATTRIBUTE_TYPE_{t.name}"): t for t in AttributeType}
_ATTRIBUTE_TYPE_OF = {t: value for value, t in _ATTRIBUTE_TYPES.items()}
_IDENTIFIERS = {getattr(identity_pb2, f"IDENTIFIER_TYPE_{k.name}"): k for k in IdentifierKind}
_VIOLATION_OF = {reason.value: getattr(pb, f"VIOLATION_REASON_{reason.name}") for reason in ViolationReason}


@dataclass
class ConfigurationApi:
    """The six configuration methods of `IngestService`; the servicer delegates to these."""

    plans: TrackingPlans
    catalog: AttributeCatalog
    imports: CsvImports
    view: ConfigView

    async def publish_plan(self, request: pb.PublishTrackingPlanRequest) -> pb.PublishTrackingPlanResponse:
        """PublishTrackingPlan."""
        expected = request.expected_version if request.HasField("expected_version") else None
        published = await self.plans.publish(
            plan_from_proto(request.plan),
            expected_version=expected,
            validate_only=request.validate_only,
            actor=current_principal.get().actor,
        )
        return pb.PublishTrackingPlanResponse(plan=plan_to_proto(published))

    async def get_plan(self, request: pb.GetTrackingPlanRequest) -> pb.GetTrackingPlanResponse:
        """GetTrackingPlan."""
        if not request.plan_id:
            raise InvalidInput.field("plan_id", "is required")
        version = request.version if request.HasField("version") else None
        return pb.GetTrackingPlanResponse(plan=plan_to_proto(await self.plans.get(request.plan_id, version)))

    async def define_attribute(self, request: pb.DefineAttributeRequest) -> pb.DefineAttributeResponse:
        """DefineAttribute."""
        if request.attribute.type not in _ATTRIBUTE_TYPES:
            raise InvalidInput.field("attribute.type", "is required")
        expected = request.expected_version if request.HasField("expected_version") else None
        defined, created = await self.catalog.define(
            attribute_from_proto(request.attribute),
            expected_version=expected,
            actor=current_principal.get().actor,
        )
        return pb.DefineAttributeResponse(attribute=attribute_to_proto(defined), created=created)

    async def list_attributes(self, request: pb.ListAttributesRequest) -> pb.ListAttributesResponse:
        """ListAttributes: keyset pages by attribute id."""
        after = _untoken(request.page.page_token, "a:")
        found, last = self.view.attributes(request.page.page_size, after)
        token = _token("a:" + last) if last else ""
        return pb.ListAttributesResponse(
            attributes=[attribute_to_proto(a) for a in found],
            page=paging_pb2.PageResponse(next_page_token=token),
        )

    async def list_violations(self, request: pb.ListViolationsRequest) -> pb.ListViolationsResponse:
        """ListViolations: offset pages of counts, largest first."""
        raw = _untoken(request.page.page_token, "o:")
        offset = int(raw) if raw.isdigit() else 0
        wanted = ViolationFilter(
            plan_id=request.plan_id,
            source_id=request.source_id,
            event=request.event,
            start=_time(request.time_range, "start"),
            end=_time(request.time_range, "end"),
        )
        counts, more = self.view.violations(wanted, request.page.page_size, offset)
        token = _token(f"o:{offset + len(counts)}") if more else ""
        return pb.ListViolationsResponse(
            counts=[count_to_proto(c) for c in counts], page=paging_pb2.PageResponse(next_page_token=token)
        )

    async def import_csv(self, requests: AsyncIterator[pb.ImportCsvRequest]) -> pb.ImportCsvResponse:
        """ImportCsv: the header first, then the chunks, handed on as they arrive (never the whole file)."""
        iterator = aiter(requests)
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput.field("header", "the first request of the stream must carry the header")
        header = first.header
        import_id, report = await self.imports.run(
            current_principal.get().source_id, header.import_id, spec_from_proto(header), _chunks(iterator)
        )
        return report_to_proto(import_id, report)


async def _chunks(requests: AsyncIterator[pb.ImportCsvRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidInput.field("header", "only the first request of the stream may carry a header")
        yield request.chunk


def plan_from_proto(plan: pb.TrackingPlan) -> TrackingPlan:
    """The contract's plan as the domain's (output-only fields ignored)."""
    return TrackingPlan(
        plan_id=plan.plan_id,
        display_name=plan.display_name,
        common_schema=_struct(plan.common_json_schema, "plan.common_json_schema")
        if plan.HasField("common_json_schema")
        else None,
        events=tuple(
            PlannedEvent(
                _MESSAGE_TYPES.get(e.message_type, "track") if e.message_type else "track",
                e.event,
                _struct(e.json_schema, f"plan.events[{index}].json_schema")
                if e.HasField("json_schema")
                else {},
                e.description,
            )
            for index, e in enumerate(plan.events)
        ),
        sources=tuple(
            Enforcement(
                s.source_id,
                _MODES.get(s.unplanned_events, Verdict.ALLOW),
                _MODES.get(s.schema_violations, Verdict.ALLOW),
                s.omit_unplanned_properties,
            )
            for s in plan.sources
        ),
    )


def plan_to_proto(plan: TrackingPlan) -> pb.TrackingPlan:
    """The domain's plan as the contract's."""
    message = pb.TrackingPlan(
        plan_id=plan.plan_id,
        version=plan.version,
        display_name=plan.display_name,
        events=[
            pb.PlannedEvent(
                message_type=_MESSAGE_TYPE_OF[e.message_type],
                event=e.event,
                json_schema=_to_struct(e.json_schema),
                description=e.description,
            )
            for e in plan.events
        ],
        sources=[
            pb.SourceEnforcement(
                source_id=s.source_id,
                unplanned_events=_MODE_OF[s.unplanned_events],
                schema_violations=_MODE_OF[s.schema_violations],
                omit_unplanned_properties=s.omit_unplanned_properties,
            )
            for s in plan.sources
        ],
        published_by=_actor(plan.published_by),
    )
    if plan.common_schema is not None:
        message.common_json_schema.CopyFrom(_to_struct(plan.common_schema))
    if plan.published_at is not None:
        message.publish_time.CopyFrom(_timestamp(plan.published_at))
    return message


def attribute_from_proto(attribute: pb.Attribute) -> Attribute:
    """The contract's attribute as the domain's (version and update time ignored)."""
    return Attribute(
        attribute_id=attribute.attribute_id,
        attribute=attribute.attribute,
        type=_ATTRIBUTE_TYPES[attribute.type],
        description=attribute.description,
        bands=tuple(
            Band(
                b.label,
                b.lower_bound if b.HasField("lower_bound") else None,
                b.upper_bound if b.HasField("upper_bound") else None,
            )
            for b in attribute.bands
        ),
        personal_data=attribute.personal_data,
    )


def attribute_to_proto(attribute: Attribute) -> pb.Attribute:
    """The domain's attribute as the contract's."""
    message = pb.Attribute(
        attribute_id=attribute.attribute_id,
        attribute=attribute.attribute,
        type=_ATTRIBUTE_TYPE_OF[attribute.type],
        description=attribute.description,
        bands=[pb.Band(label=b.label, lower_bound=b.lower, upper_bound=b.upper) for b in attribute.bands],
        personal_data=attribute.personal_data,
        version=attribute.version,
    )
    if attribute.updated_at is not None:
        message.update_time.CopyFrom(_timestamp(attribute.updated_at))
    return message


def spec_from_proto(header: pb.CsvImportHeader) -> ImportSpec:
    """The contract's CSV header as an import spec."""
    for index, column in enumerate(header.identifier_columns):
        if column.type not in _IDENTIFIERS:
            raise InvalidInput.field(f"header.identifier_columns[{index}].type", "is required")
    return ImportSpec(
        identifier_columns=tuple(
            IdentifierColumn(c.column, _IDENTIFIERS[c.type], c.namespace) for c in header.identifier_columns
        ),
        attribute_columns=tuple(AttributeColumn(c.column, c.attribute_id) for c in header.attribute_columns),
        timestamp_column=header.timestamp_column,
        delimiter=header.delimiter or ",",
        dry_run=header.dry_run,
    )


def report_to_proto(import_id: str, report: ImportReport) -> pb.ImportCsvResponse:
    """An import report as the contract's response."""
    return pb.ImportCsvResponse(
        import_id=import_id,
        rows_read=report.rows_read,
        rows_imported=report.rows_imported,
        rows_rejected=report.rows_rejected,
        bad_rows=[pb.BadRow(line_number=b.line, column=b.column, reason=b.reason) for b in report.bad_rows],
        bad_rows_truncated=report.truncated,
    )


def count_to_proto(count: ViolationCount) -> pb.ViolationCount:
    """A violation count as the contract's."""
    return pb.ViolationCount(
        source_id=count.source_id,
        plan_id=count.plan_id,
        plan_version=count.plan_version,
        message_type=_MESSAGE_TYPE_OF.get(count.message_type, message_pb2.MESSAGE_TYPE_UNSPECIFIED),
        event=count.event,
        reason=_VIOLATION_OF.get(count.reason, pb.VIOLATION_REASON_UNSPECIFIED),
        field=count.field,
        count=count.count,
        blocked_count=count.blocked_count,
        first_seen=_timestamp(count.first_seen),
        last_seen=_timestamp(count.last_seen),
    )


def _struct(value: Struct, path: str) -> dict[str, Any]:
    """A request's JSON, refused naming the field when it holds what cannot be stored (NaN, too deep…)."""
    try:
        document: dict[str, Any] = json_format.MessageToDict(value)
    except (ValueError, json_format.SerializeToJsonError):  # NaN / Infinity in a number_value
        raise InvalidInput.field(path, "holds NaN or Infinity, which JSON cannot represent") from None
    violations = [FieldViolation(where, why) for where, why in payload.problems(document, path)]
    if violations:
        raise InvalidInput(violations)
    return document


def _to_struct(document: Any) -> Struct:
    """Stored JSON as a Struct; what cannot be represented is replaced (stored before the limits existed)."""
    clean, _ = payload.repaired(dict(document))
    struct = Struct()
    struct.update(clean)
    return struct


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _time(time_range: Any, name: str) -> datetime | None:
    if not time_range.HasField(name):
        return None
    moment: datetime = getattr(time_range, name).ToDatetime(tzinfo=UTC)
    return moment


def _actor(actor: str) -> audit_pb2.Actor:
    kind, _, ident = actor.partition(":")
    if kind == "admin":
        return audit_pb2.Actor(kind=audit_pb2.ACTOR_KIND_OPERATOR, id=ident or "admin")
    if kind == "source":
        return audit_pb2.Actor(kind=audit_pb2.ACTOR_KIND_SERVICE, id=ident)
    return audit_pb2.Actor(kind=audit_pb2.ACTOR_KIND_UNSPECIFIED, id=ident)


def _token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _untoken(token: str, prefix: str) -> str:
    """The value inside a page token this service issued; a foreign token is INVALID_ARGUMENT."""
    if not token:
        return ""
    try:
        value = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not value.startswith(prefix):
        raise InvalidInput.field("page.page_token", "is not a token this service issued")
    return value.removeprefix(prefix)
