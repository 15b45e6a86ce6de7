"""gRPC edge of consent: SetConsent, GetConsent, GetConsentHistory (proto in, use case, proto out).

The person a request names is resolved through identity (`Directory`): every identifier of their profile, as
subject ids, so a decision recorded under any of them counts. The interceptor has already checked the admin
token and the shared types (profile references, timestamps, time ranges, page requests).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from cdp.errors import FieldViolation, InvalidInput, NotFound
from cdp.governance.v1 import governance_service_pb2 as pb
from cdp.runtime import paging
from cdp.runtime.auth import current_principal
from services.governance.consent import ConsentBook, ConsentCommand, HistoryEntry, HistoryQuery
from services.governance.convert import actor_message, timestamp
from services.governance.directory import Directory, Person
from services.governance.domain.consent import ConsentState, PurposeState

_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SOURCE = re.compile(r"^(api|cmp:[a-z0-9][a-z0-9_.-]{0,63})$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
MAX_IDEMPOTENCY_KEY = 128
_STATES = {True: pb.CONSENT_STATE_GRANTED, False: pb.CONSENT_STATE_DENIED, None: pb.CONSENT_STATE_UNSPECIFIED}


class ConsentRpcs:
    """The consent methods of `cdp.governance.v1.GovernanceService`."""

    def __init__(self, book: ConsentBook, directory: Directory) -> None:
        self._book, self._directory = book, directory

    async def SetConsent(self, request: pb.SetConsentRequest, context: Any) -> pb.SetConsentResponse:
        """Record decisions for the person (filed under their primary subject) and answer their consent."""
        command = self._command(request)
        person = await self._directory.find(request.subject)
        if person is None:
            raise NotFound(f"no profile {request.subject.profile_id}")
        filed = replace(command, subject_id=person.primary_subject)
        await self._book.set(filed, current_principal.get().actor)
        state = await self._book.get(person.subject_ids, jurisdiction=request.jurisdiction)
        return pb.SetConsentResponse(consent=_consent(person, state, self._book.now()))

    async def GetConsent(self, request: pb.GetConsentRequest, context: Any) -> pb.GetConsentResponse:
        """The person's consent now or as of a past moment (defaults where undecided)."""
        self._jurisdiction(request.jurisdiction, "jurisdiction")
        as_of = self._past(request.as_of, "as_of") if request.HasField("as_of") else self._book.now()
        person = await self._directory.find(request.subject)
        subjects = person.subject_ids if person is not None else ()
        state = await self._book.get(subjects, as_of, request.jurisdiction)
        return pb.GetConsentResponse(consent=_consent(person, state, as_of))

    async def GetConsentHistory(
        self, request: pb.GetConsentHistoryRequest, context: Any
    ) -> pb.GetConsentHistoryResponse:
        """A page of the person's recorded decisions, oldest (in effective time) first."""
        if request.purpose and not _PURPOSE.match(request.purpose):
            raise InvalidInput.field("purpose", "is not a purpose name (lower_snake_case)")
        size = paging.page_size(request.page.page_size)
        after = paging.decode_token(request.page.page_token, "consent-history")
        person = await self._directory.find(request.subject)
        if person is None:
            return pb.GetConsentHistoryResponse()
        window = request.time_range
        query = HistoryQuery(
            subject_ids=person.subject_ids,
            purpose=request.purpose,
            start=_moment(window.start) if window.HasField("start") else None,
            end=_moment(window.end) if window.HasField("end") else None,
            after=after,
            limit=size + 1,
        )
        entries = await self._book.history(query)
        reply = pb.GetConsentHistoryResponse(
            profile_id=person.profile_id, changes=[_change(e) for e in entries[:size]]
        )
        if len(entries) > size:
            reply.page.next_page_token = paging.encode_token("consent-history", entries[size - 1].cursor)
        return reply

    def _command(self, request: pb.SetConsentRequest) -> ConsentCommand:
        """The decisions a request states, refusing every bad field at once (the subject is resolved later)."""
        violations: list[FieldViolation] = []
        purposes: dict[str, bool] = {}
        configured = self._book.defaults.purposes
        if not request.consents:
            violations.append(FieldViolation("consents", "needs at least one purpose"))
        for index, item in enumerate(request.consents):
            path = f"consents[{index}]"
            if item.purpose not in configured:
                violations.append(
                    FieldViolation(
                        f"{path}.purpose", f"is not a configured purpose ({', '.join(configured)})"
                    )
                )
            elif item.purpose in purposes:
                violations.append(FieldViolation(f"{path}.purpose", "is listed twice"))
            if item.state == pb.CONSENT_STATE_UNSPECIFIED or item.state not in _STATES.values():
                violations.append(FieldViolation(f"{path}.state", "must be GRANTED or DENIED"))
            purposes.setdefault(item.purpose, item.state == pb.CONSENT_STATE_GRANTED)
        if request.source and not _SOURCE.match(request.source):
            violations.append(FieldViolation("source", "must be 'api' or 'cmp:<tool>' (lowercase)"))
        if request.policy_version and not _VERSION.match(request.policy_version):
            violations.append(
                FieldViolation("policy_version", "must be at most 64 letters, digits and _.:+- (no spaces)")
            )
        if request.jurisdiction and not self._book.defaults.knows(request.jurisdiction):
            violations.append(FieldViolation("jurisdiction", self._unknown_jurisdiction()))
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            violations.append(
                FieldViolation("idempotency_key", f"is longer than {MAX_IDEMPOTENCY_KEY} characters")
            )
        effective = _moment(request.effective_time) if request.HasField("effective_time") else None
        if violations:
            raise InvalidInput(violations)
        return ConsentCommand(
            subject_id="",
            purposes=purposes,
            source=request.source or "api",
            policy_version=request.policy_version,
            jurisdiction=request.jurisdiction,
            effective_at=effective,
            idempotency_key=request.idempotency_key,
        )

    def _jurisdiction(self, jurisdiction: str, path: str) -> None:
        if jurisdiction and not self._book.defaults.knows(jurisdiction):
            raise InvalidInput.field(path, self._unknown_jurisdiction())

    def _unknown_jurisdiction(self) -> str:
        return f"is not a configured jurisdiction ({', '.join(sorted(self._book.defaults.regimes))})"

    def _past(self, moment: timestamp_pb2.Timestamp, path: str) -> datetime:
        value = _moment(moment)
        if value > self._book.now():
            raise InvalidInput.field(path, "must not be in the future")
        return value


def _moment(moment: timestamp_pb2.Timestamp) -> datetime:
    return moment.ToDatetime(tzinfo=UTC)


def _consent(person: Person | None, state: ConsentState, as_of: datetime) -> pb.Consent:
    return pb.Consent(
        profile_id=person.profile_id if person is not None else "",
        purposes=[_purpose(p) for p in state.purposes],
        as_of=timestamp(as_of),
        jurisdiction=state.jurisdiction,
    )


def _purpose(state: PurposeState) -> pb.PurposeConsent:
    message = pb.PurposeConsent(
        purpose=state.purpose, state=_STATES[state.granted], is_default=state.is_default
    )
    decision = state.decision
    if decision is not None:
        message.effective_time.CopyFrom(timestamp(decision.effective_at))
        message.source = decision.source
        message.policy_version = decision.policy_version
        message.jurisdiction = decision.jurisdiction
    return message


def _change(entry: HistoryEntry) -> pb.ConsentChange:
    return pb.ConsentChange(
        purpose=entry.purpose,
        previous_state=_STATES[entry.previous],
        state=_STATES[entry.granted],
        effective_time=timestamp(entry.effective_at),
        source=entry.source,
        actor=actor_message(entry.actor),
        cause_message_id=entry.cause_message_id,
        policy_version=entry.policy_version,
        jurisdiction=entry.jurisdiction,
        record_time=timestamp(entry.recorded_at),
    )
