"""gRPC edge of identity: converts requests, calls the use cases, converts replies."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format

from cdp.common.v1 import identity_pb2
from cdp.errors import InvalidInput, NotBuiltYet
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime import paging
from cdp.runtime.auth import current_principal
from cdp.runtime.settings import DEFAULT_MAX_MESSAGE_BYTES
from services.identity import convert
from services.identity.application import IdentityApp
from services.identity.queries import ProfileQuery

AudienceMembers = Callable[[str], Awaitable[frozenset[str]]]
"""An audience id → its current members' profile ids (segments answers this question, over gRPC)."""

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"]


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    """The `cdp.identity.v1.IdentityService` implementation (every method needs the admin token)."""

    def __init__(
        self,
        app: IdentityApp,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        audience_members: AudienceMembers | None = None,
    ) -> None:
        self._app = app
        self._audience_members = audience_members
        self._budget = convert.reply_budget(max_message_bytes)

    async def Resolve(self, request: pb.ResolveRequest, context: Any) -> pb.ResolveResponse:
        """Which profile the identifiers belong to."""
        if not 1 <= len(request.identifiers) <= convert.MAX_RESOLVE:
            raise InvalidInput.field("identifiers", f"needs 1 to {convert.MAX_RESOLVE} identifiers")
        refs = [convert.identifier_ref(i, f"identifiers[{n}]") for n, i in enumerate(request.identifiers)]
        profile, matches, ambiguous = await self._app.resolve(refs)
        reply = pb.ResolveResponse(ambiguous=ambiguous)
        if profile is not None:
            reply.profile_id = profile
        for ref, found in matches:
            match = pb.IdentifierMatch(identifier=convert.identifier_message(ref.type, ref.value))
            if found is not None:
                match.profile_id = found
            reply.matches.append(match)
        return reply

    async def GetProfile(self, request: pb.GetProfileRequest, context: Any) -> pb.GetProfileResponse:
        """One profile, now or as of a past moment."""
        ref = convert.profile_ref(request.profile)
        mask = convert.read_mask(request.read_mask.paths)
        as_of = convert.to_datetime(request.as_of) if request.HasField("as_of") else None
        record, redirected = await self._app.get_profile(ref, as_of)
        profile = convert.profile_message(record, mask)
        convert.fit(profile, self._budget)
        return pb.GetProfileResponse(profile=profile, redirected=redirected)

    async def ListProfiles(self, request: pb.ListProfilesRequest, context: Any) -> pb.ListProfilesResponse:
        """A page of profiles matching the filter."""
        query = _profile_query(request.filter)
        if request.filter.audience_id:
            if self._audience_members is None:
                raise NotBuiltYet("audience filter of ListProfiles without a segments service")
            members = await self._audience_members(request.filter.audience_id)
            query = dataclasses.replace(query, members=tuple(sorted(members)))
        mask = convert.read_mask(request.read_mask.paths)
        after = paging.decode_token(request.page.page_token, "profiles")
        records, more = await self._app.list_profiles(query, after, paging.page_size(request.page.page_size))
        reply = pb.ListProfilesResponse()
        used, last = 0, None
        for record in records:  # a page ends early rather than outgrow what one reply may carry
            profile = convert.profile_message(record, mask)
            size = convert.fit(profile, self._budget) + 8  # and the field's tag and length
            if last is not None and used + size > self._budget:
                more = True
                break
            reply.profiles.append(profile)
            used, last = used + size, record.profile_id
        if more and last is not None:
            reply.page.next_page_token = paging.encode_token("profiles", last)
        return reply

    async def GetMergeHistory(
        self, request: pb.GetMergeHistoryRequest, context: Any
    ) -> pb.GetMergeHistoryResponse:
        """Every decision about the profile, with its rule and cause."""
        ref = convert.profile_ref(request.profile)
        start, end = _range(request)
        after = int(paging.decode_token(request.page.page_token, "decisions") or -1)
        size = paging.page_size(request.page.page_size)
        profile, rows, clear = await self._app.merge_history(ref, start, end, after, size + 1)
        reply = pb.GetMergeHistoryResponse(
            profile_id=profile, decisions=[convert.decision_message(r, clear) for r in rows[:size]]
        )
        if len(rows) > size:
            reply.page.next_page_token = paging.encode_token("decisions", str(rows[size - 1]["seq"]))
        return reply

    async def SplitProfile(self, request: pb.SplitProfileRequest, context: Any) -> pb.SplitProfileResponse:
        """Cut an identifier or a link off a profile."""
        ref = convert.profile_ref(request.profile)
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidInput.field("target", "needs an identifier or a decision_id")
        reason = request.reason.strip()
        if not reason or len(reason) > convert.MAX_REASON:
            raise InvalidInput.field("reason", f"is required (at most {convert.MAX_REASON} characters)")
        identifier = (
            convert.identifier_ref(request.identifier, "identifier") if target == "identifier" else None
        )
        row, clear = await self._app.split(
            ref,
            identifier=identifier,
            decision_id=request.decision_id.strip() if target == "decision_id" else None,
            reason=reason,
            prevent_relink=request.prevent_relink,
            actor=current_principal.get().actor,
        )
        return pb.SplitProfileResponse(
            profile_id=row["profile_id"],
            new_profile_id=row["other_profile_id"],
            decision=convert.decision_message(row, clear),
        )

    async def SetIdentityRules(
        self, request: pb.SetIdentityRulesRequest, context: Any
    ) -> pb.SetIdentityRulesResponse:
        """Replace the identity rules."""
        if not request.HasField("rules"):
            raise InvalidInput.field("rules", "is required")
        rules = convert.rules_from_message(request.rules)
        if request.HasField("expected_version") and request.expected_version < 0:
            raise InvalidInput.field("expected_version", "must not be negative")
        expected = request.expected_version if request.HasField("expected_version") else None
        found = await self._app.set_rules(rules, expected, current_principal.get().actor)
        return pb.SetIdentityRulesResponse(rules=convert.rules_message(found))

    async def GetIdentityRules(
        self, request: pb.GetIdentityRulesRequest, context: Any
    ) -> pb.GetIdentityRulesResponse:
        """The rules in force."""
        return pb.GetIdentityRulesResponse(rules=convert.rules_message(await self._app.get_rules()))


def _profile_query(message: pb.ProfileFilter) -> ProfileQuery:
    types = tuple(
        convert.TYPE_NAMES.get(t, "")
        for t in message.identifier_types
        if t != identity_pb2.IDENTIFIER_TYPE_EXTERNAL
    )
    for index, t in enumerate(message.identifier_types):
        if t == identity_pb2.IDENTIFIER_TYPE_UNSPECIFIED:
            raise InvalidInput.field(f"filter.identifier_types[{index}]", "is not a known identifier type")
    updated = message.updated
    traits_equal = None
    if message.HasField("traits_equal"):
        try:
            traits_equal = json_format.MessageToDict(message.traits_equal)
        except ValueError as error:  # NaN or infinity: no trait can equal it, and JSON cannot carry it
            raise InvalidInput.field(
                "filter.traits_equal", f"holds a value that is not JSON: {error}"
            ) from error
    return ProfileQuery(
        identifier_types=types,
        updated_start=convert.to_datetime(updated.start) if updated.HasField("start") else None,
        updated_end=convert.to_datetime(updated.end) if updated.HasField("end") else None,
        traits_equal=traits_equal,
    )


def _range(request: pb.GetMergeHistoryRequest) -> tuple[Any, Any]:
    window = request.time_range
    start = convert.to_datetime(window.start) if window.HasField("start") else None
    end = convert.to_datetime(window.end) if window.HasField("end") else None
    return start, end
