"""gRPC edge of segments: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from cdp.common.v1 import identity_pb2
from cdp.errors import InvalidInput
from cdp.runtime import paging
from cdp.runtime.auth import current_principal
from cdp.segments.v1 import segments_service_pb2 as pb
from cdp.segments.v1 import segments_service_pb2_grpc
from services.segments import convert
from services.segments.application import AudienceDraft, SegmentsApp, TraitDraft
from services.segments.domain import codec
from services.segments.queries import AudienceRecord, TraitRecord

SERVICE = pb.DESCRIPTOR.services_by_name["SegmentsService"]

STATES = {
    "computing": pb.AUDIENCE_STATE_COMPUTING,
    "active": pb.AUDIENCE_STATE_ACTIVE,
    "archived": pb.AUDIENCE_STATE_ARCHIVED,
}
MASKABLE = {"display_name", "description", "condition", "expression"}
MAX_SAMPLE = 100
DEFAULT_CHUNK, MAX_CHUNK = 500, 5000

ProfileResolver = Callable[[identity_pb2.ProfileRef], Awaitable[str]]
"""A profile reference by identifier → its profile id (identity answers this question, over gRPC)."""


class SegmentsServicer(segments_service_pb2_grpc.SegmentsServiceServicer):
    """The `cdp.segments.v1.SegmentsService` implementation."""

    def __init__(self, app: SegmentsApp, resolve: ProfileResolver) -> None:
        self._app, self._resolve = app, resolve

    async def CreateAudience(
        self, request: pb.CreateAudienceRequest, context: Any
    ) -> pb.CreateAudienceResponse:
        """Define an audience (members computed from the whole population before the reply, within 30 s)."""
        draft = _draft(request.audience)
        record = await self._app.create_audience(draft, request.validate_only, _actor())
        return pb.CreateAudienceResponse(audience=_audience(record))

    async def UpdateAudience(
        self, request: pb.UpdateAudienceRequest, context: Any
    ) -> pb.UpdateAudienceResponse:
        """Change an audience; members are recomputed."""
        if not request.audience.audience_id:
            raise InvalidInput.field("audience.audience_id", "is required")
        fields = set(request.update_mask.paths) or {"display_name", "description", "condition"}
        unknown = fields - MASKABLE
        if unknown:
            raise InvalidInput.field("update_mask", f"names fields that cannot change: {sorted(unknown)}")
        if "expression" in fields:
            fields = (fields - {"expression"}) | {"condition"}
        expected = request.expected_version if request.HasField("expected_version") else None
        record = await self._app.update_audience(_draft(request.audience), fields, expected, _actor())
        return pb.UpdateAudienceResponse(audience=_audience(record))

    async def ArchiveAudience(
        self, request: pb.ArchiveAudienceRequest, context: Any
    ) -> pb.ArchiveAudienceResponse:
        """Archive an audience: its members exit."""
        _required(request.audience_id, "audience_id")
        if len(request.reason) > 500:
            raise InvalidInput.field("reason", "is longer than 500 characters")
        record = await self._app.archive_audience(request.audience_id, request.reason, _actor())
        return pb.ArchiveAudienceResponse(audience=_audience(record))

    async def GetAudience(self, request: pb.GetAudienceRequest, context: Any) -> pb.GetAudienceResponse:
        """One audience."""
        _required(request.audience_id, "audience_id")
        record = await asyncio.to_thread(self._app.get_audience, request.audience_id)
        return pb.GetAudienceResponse(audience=_audience(record))

    async def ListAudiences(self, request: pb.ListAudiencesRequest, context: Any) -> pb.ListAudiencesResponse:
        """A page of audiences by id."""
        after = paging.decode_token(request.page.page_token, "audiences")
        size = paging.page_size(request.page.page_size)
        records = await asyncio.to_thread(self._app.audiences, after, size + 1, request.include_archived)
        reply = pb.ListAudiencesResponse(audiences=[_audience(r) for r in records[:size]])
        if len(records) > size:
            reply.page.next_page_token = paging.encode_token("audiences", records[size - 1].audience_id)
        return reply

    async def PreviewAudience(
        self, request: pb.PreviewAudienceRequest, context: Any
    ) -> pb.PreviewAudienceResponse:
        """Size and sample of a condition over the whole population, in SQL, without saving it."""
        if not 0 <= request.sample_size <= MAX_SAMPLE:
            raise InvalidInput.field("sample_size", f"must be between 0 and {MAX_SAMPLE}")
        condition = _condition(request.condition, "condition") if request.HasField("condition") else None
        if condition is not None and request.expression:
            raise InvalidInput.field("expression", "set either condition or expression, not both")
        size, ids, now = await asyncio.to_thread(
            self._app.preview, condition, request.expression, request.sample_size
        )
        return pb.PreviewAudienceResponse(
            size=size, sample_profile_ids=ids, evaluate_time=convert.timestamp_message(now)
        )

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Any
    ) -> AsyncIterator[pb.ListMembersResponse]:
        """Every member, in chunks by profile id (now, or as of a past moment)."""
        _required(request.audience_id, "audience_id")
        if not 0 <= request.chunk_size <= MAX_CHUNK:
            raise InvalidInput.field("chunk_size", f"must be between 0 and {MAX_CHUNK}")
        chunk = request.chunk_size or DEFAULT_CHUNK
        as_of = _micros(request.as_of) if request.HasField("as_of") else None
        chunks = await asyncio.to_thread(self._app.members, request.audience_id, as_of, chunk)
        while True:
            members = await asyncio.to_thread(next, chunks, None)
            if members is None:
                return
            yield pb.ListMembersResponse(
                members=[
                    pb.AudienceMember(
                        profile_id=m.profile_id, enter_time=convert.timestamp_message(m.enter_time)
                    )
                    for m in members
                ]
            )

    async def CheckMembership(
        self, request: pb.CheckMembershipRequest, context: Any
    ) -> pb.CheckMembershipResponse:
        """Which audiences a profile (by id or identifier) belongs to."""
        ref = request.profile
        kind = ref.WhichOneof("ref")
        if kind is None:
            raise InvalidInput.field("profile", "is required")
        if kind == "profile_id" and await asyncio.to_thread(self._app.queries.knows_profile, ref.profile_id):
            profile_id = ref.profile_id
        else:
            profile_id = await self._resolve(ref)
        found = await asyncio.to_thread(self._app.check, profile_id, list(request.audience_ids))
        return pb.CheckMembershipResponse(
            profile_id=profile_id,
            memberships=[
                pb.AudienceMembership(
                    audience_id=m.audience_id,
                    member=m.member,
                    change_time=convert.timestamp_message(m.change_time)
                    if m.change_time is not None
                    else None,
                )
                for m in found
            ],
        )

    async def WatchMemberships(
        self, request: pb.WatchMembershipsRequest, context: Any
    ) -> AsyncIterator[pb.WatchMembershipsResponse]:
        """Membership changes as they happen; resumable from any change's token."""
        after = None
        if request.resume_token:
            value = paging.decode_token(request.resume_token, "memberships", "resume_token")
            if not value.isdigit():
                raise InvalidInput.field("resume_token", "is not a token this service issued")
            after = int(value)
        async for position, row in self._app.watch(list(request.audience_ids), after):
            yield pb.WatchMembershipsResponse(
                audience_id=row.audience_id,
                profile_id=row.profile_id,
                kind=pb.MEMBERSHIP_CHANGE_KIND_ENTERED if row.entered else pb.MEMBERSHIP_CHANGE_KIND_EXITED,
                change_time=convert.timestamp_message(row.time),
                resume_token=paging.encode_token("memberships", str(position)),
                reason=row.reason,
                changed_conditions=list(row.changed or ()),
            )

    async def GetAudienceStats(
        self, request: pb.GetAudienceStatsRequest, context: Any
    ) -> pb.GetAudienceStatsResponse:
        """Size now, entries and exits over a range, and the size after each interval."""
        _required(request.audience_id, "audience_id")
        window = request.time_range
        start = _micros(window.start) if window.HasField("start") else None
        end = _micros(window.end) if window.HasField("end") else None
        interval = _duration(request.interval) if request.HasField("interval") else None
        size, entered, exited, points = await asyncio.to_thread(
            self._app.stats, request.audience_id, start, end, interval
        )
        return pb.GetAudienceStatsResponse(
            size=size,
            entered_count=entered,
            exited_count=exited,
            history=[pb.SizePoint(time=convert.timestamp_message(at), size=count) for at, count in points],
        )

    async def DefineComputedTrait(
        self, request: pb.DefineComputedTraitRequest, context: Any
    ) -> pb.DefineComputedTraitResponse:
        """Create or replace a computed trait; values are recomputed from history before the reply."""
        message = request.computed_trait
        aggregate = None
        if message.aggregation != pb.AGGREGATION_UNSPECIFIED:
            if message.expression:
                raise InvalidInput.field("computed_trait.expression", "set either the fields or expression")
            aggregate = convert.aggregate_from_proto(message)
        draft = TraitDraft(
            trait_id=message.computed_trait_id,
            display_name=message.display_name or message.computed_trait_id,
            description=message.description,
            aggregate=aggregate,
            expression=message.expression,
        )
        expected = request.expected_version if request.HasField("expected_version") else None
        record, created = await self._app.define_trait(draft, expected, _actor())
        return pb.DefineComputedTraitResponse(computed_trait=_trait(record), created=created)

    async def ListComputedTraits(
        self, request: pb.ListComputedTraitsRequest, context: Any
    ) -> pb.ListComputedTraitsResponse:
        """A page of computed traits by id."""
        after = paging.decode_token(request.page.page_token, "traits")
        size = paging.page_size(request.page.page_size)
        records = await asyncio.to_thread(self._app.traits, after, size + 1)
        reply = pb.ListComputedTraitsResponse(computed_traits=[_trait(r) for r in records[:size]])
        if len(records) > size:
            reply.page.next_page_token = paging.encode_token("traits", records[size - 1].trait_id)
        return reply


def _draft(message: pb.Audience) -> AudienceDraft:
    condition = _condition(message.condition, "audience.condition") if message.HasField("condition") else None
    if condition is not None and message.expression:
        raise InvalidInput.field("audience.expression", "set either condition or expression, not both")
    return AudienceDraft(
        audience_id=message.audience_id,
        display_name=message.display_name,
        description=message.description,
        condition=condition,
        expression=message.expression,
    )


def _condition(message: pb.Condition, path: str) -> Any:
    return convert.condition_from_proto(message, path)


def _audience(record: AudienceRecord) -> pb.Audience:
    message = pb.Audience(
        audience_id=record.audience_id,
        display_name=record.display_name,
        description=record.description,
        condition=convert.condition_to_proto(codec.condition_from_json(record.definition)),
        state=STATES.get(record.state, pb.AUDIENCE_STATE_UNSPECIFIED),
        version=record.version,
        size=record.size,
        create_time=convert.timestamp_message(record.create_time),
        update_time=convert.timestamp_message(record.update_time),
        expression=record.expression,
    )
    message.created_by.id = record.created_by
    return message


def _trait(record: TraitRecord) -> pb.ComputedTrait:
    message = pb.ComputedTrait(
        computed_trait_id=record.trait_id,
        display_name=record.display_name,
        description=record.description,
        version=record.version,
        update_time=convert.timestamp_message(record.update_time),
        expression=record.expression,
    )
    convert.aggregate_to_proto(codec.aggregate_from_json(record.definition), message)
    return message


def _actor() -> str:
    return current_principal.get().actor


def _required(value: str, path: str) -> None:
    if not value:
        raise InvalidInput.field(path, "is required")


def _micros(stamp: timestamp_pb2.Timestamp) -> int:
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000


def _duration(duration: duration_pb2.Duration) -> int:
    return duration.seconds * 1_000_000 + duration.nanos // 1000
