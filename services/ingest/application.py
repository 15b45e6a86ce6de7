"""Ingest's use cases: collect messages from a source (validate, dedupe, gate, encrypt, append)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from cdp.errors import FieldViolation
from cdp.eventlog.common import EventIdConflict
from cdp.eventlog.group_commit import GroupCommitter
from cdp.eventlog.port import AppendResult, StreamAppend
from cdp.events import ConsentChanged, EventMetadata, MessageCollected, streams
from cdp.events.ingest import seal_payload
from cdp.keyring import Keyring, SubjectIds
from services.ingest.domain.consent import consent_change, consent_preferences
from services.ingest.domain.messages import InvalidMessage, Message, parse_message
from services.ingest.domain.outcomes import Outcome, Reason, Status
from services.ingest.domain.plans import NoPlans, PlanCheck, PlanViolation, Verdict
from services.ingest.readmodel import IngestState

log = structlog.get_logger(__name__)

# Event ids derive from (source, messageId): a message sent again, whether retried after a crash between
# append and acknowledgement or re-sent days later, maps to the same event, and the log refuses to store an
# event id twice. Deduplication is therefore exactly as durable as the log itself.
_EVENT_IDS = uuid.UUID("6f1d3c52-4d7e-4a43-9d55-1b0c8e7a2f10")


def message_event_id(source_id: str, message_id: str) -> uuid.UUID:
    """The event id of a source's message: stable across retries, restarts and processes."""
    return uuid.uuid5(_EVENT_IDS, f"{source_id}\x00{message_id}")


@dataclass
class _Accepted:
    """A message on its way into the log."""

    index: int
    message: Message
    subject_id: str
    identifiers: dict[str, str]
    plan_violations: tuple[PlanViolation, ...] = ()


@dataclass
class Counters:
    """What ingest did, per status, since start (never personal data)."""

    by_status: Counter[str] = field(default_factory=Counter)

    def count(self, outcomes: Sequence[Outcome]) -> None:
        """Add a batch's outcomes."""
        for outcome in outcomes:
            key = outcome.reason.value if outcome.reason is Reason.SUPPRESSED else outcome.status.value
            self.by_status[key] += 1


class Collector:
    """Turns raw Segment-spec messages from one source into MessageCollected events in subject streams."""

    def __init__(
        self,
        committer: GroupCommitter,
        keyring: Keyring,
        subject_ids: SubjectIds,
        state: IngestState,
        *,
        plans: PlanCheck | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._committer = committer
        self._keyring = keyring
        self._subject_ids = subject_ids
        self._state = state
        self._plans = plans or NoPlans()
        self._clock = clock
        # Consent appended but perhaps not yet projected: subject → (global position, purposes as now known).
        self._recent_consent: dict[str, tuple[int, dict[str, bool]]] = {}
        self.counters = Counters()

    async def collect(
        self,
        source_id: str,
        raws: Sequence[Any],  # JSON objects as sent, or an InvalidMessage where an edge could not convert one
        *,
        default_type: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        path: str = "batch",
        indexed: bool = True,
    ) -> list[Outcome]:
        """Accept, deduplicate or reject each message on its own; one bad message never sinks the others.

        Violations name fields under `path` (`batch[3].event`, or `message.event` when not `indexed`).
        """
        received_at = self._clock()
        outcomes: dict[int, Outcome] = {}
        parsed: list[tuple[int, Message]] = []
        for index, raw in enumerate(raws):
            item_path = f"{path}[{index}]" if indexed else path
            try:
                if isinstance(raw, InvalidMessage):  # the edge could not even turn it into JSON
                    raise _under(raw, item_path)
                raw = _with_defaults(raw, defaults)
                message = parse_message(
                    raw,
                    received_at=received_at,
                    default_type=default_type,
                    message_id=_new_message_id,
                    path=item_path,
                )
            except InvalidMessage as error:
                outcomes[index] = _rejected(index, raw, received_at, error.rejection, tuple(error.violations))
                continue
            parsed.append((index, message))

        accepted, consent = await self._admit(source_id, parsed, received_at, outcomes)
        if accepted:
            await self._append(source_id, accepted, consent, received_at, outcomes)
        result = [outcomes[index] for index in range(len(raws))]
        self.counters.count(result)
        return result

    async def _admit(
        self,
        source_id: str,
        parsed: list[tuple[int, Message]],
        received_at: datetime,
        outcomes: dict[int, Outcome],
    ) -> tuple[list[_Accepted], dict[str, dict[str, bool]]]:
        """Drop duplicates and suppressed subjects, apply the tracking plan; also the subjects' known consent."""
        candidates = [self._identify(index, message) for index, message in parsed]
        suppressed = self._state.suppressed
        admitted: list[_Accepted] = []
        in_batch: set[str] = set()
        for candidate in candidates:
            message = candidate.message
            if message.message_id in in_batch:
                outcomes[candidate.index] = Outcome(
                    candidate.index, message.message_id, Status.DUPLICATE, received_at
                )
                continue
            in_batch.add(message.message_id)
            if suppressed and suppressed.intersection(candidate.identifiers.values()):
                outcomes[candidate.index] = Outcome(
                    candidate.index, message.message_id, Status.REJECTED, received_at, Reason.SUPPRESSED
                )
                continue
            decision = self._plans.check(source_id, message)
            if decision.verdict is Verdict.BLOCK:
                outcomes[candidate.index] = Outcome(
                    candidate.index,
                    message.message_id,
                    Status.REJECTED,
                    received_at,
                    Reason.TRACKING_PLAN_BLOCKED,
                    plan_violations=decision.violations,
                )
                continue
            flagged = decision.violations if decision.verdict is Verdict.FLAG else ()
            admitted.append(replace(candidate, message=decision.message, plan_violations=flagged))
        return admitted, await self._known_consent(admitted)

    async def _known_consent(self, admitted: list[_Accepted]) -> dict[str, dict[str, bool]]:
        """The recorded consent of the subjects whose messages state consent (most messages do not)."""
        stating = {a.subject_id for a in admitted if consent_preferences(a.message) is not None}
        if not stating:
            return {}
        known = await asyncio.to_thread(self._state.consent_of, stating)
        recent = {s: purposes for s, (_, purposes) in self._recent_consent.items() if s in stating}
        return {**known, **recent}

    def _identify(self, index: int, message: Message) -> _Accepted:
        """The subject whose stream and key hold the message, and the subject ids of its user and anonymous ids."""
        identifiers = {}
        if message.user_id is not None:
            identifiers["user_id"] = self._subject_ids("user_id", message.user_id)
        if message.anonymous_id is not None:
            identifiers["anonymous_id"] = self._subject_ids("anonymous_id", message.anonymous_id)
        subject_id = identifiers["user_id" if message.user_id is not None else "anonymous_id"]
        return _Accepted(index, message, subject_id, identifiers)

    async def _append(
        self,
        source_id: str,
        accepted: list[_Accepted],
        consent: dict[str, dict[str, bool]],
        received_at: datetime,
        outcomes: dict[int, Outcome],
    ) -> None:
        """Encrypt, group by stream, append in the next shared commit, and report per message."""
        keys = await self._keyring.prefetch({a.subject_id for a in accepted})
        erased = {subject for subject, subject_keys in keys.items() if subject_keys.erased}
        if erased:
            # An erased person's key is gone for good: their messages are dropped, like a suppressed subject's.
            for item in accepted:
                if item.subject_id in erased:
                    outcomes[item.index] = Outcome(
                        item.index, item.message.message_id, Status.REJECTED, received_at, Reason.SUPPRESSED
                    )
            accepted = [item for item in accepted if item.subject_id not in erased]
        metadata = EventMetadata(actor=f"source:{source_id}")
        # One part per message: the log then says, message by message, whether it was new or a retry.
        parts: list[StreamAppend] = []
        owners: list[_Accepted | None] = []
        for item in accepted:
            event_id = message_event_id(source_id, item.message.message_id)
            event = self._message_event(source_id, item).to_new_event(metadata, id=event_id)
            parts.append(StreamAppend(streams.subject_stream(item.subject_id), [event]))
            owners.append(item)
            purposes = consent_change(item.message, consent.get(item.subject_id))
            if purposes is not None:
                consent[item.subject_id] = {**consent.get(item.subject_id, {}), **purposes}
                change = ConsentChanged(
                    subject_id=item.subject_id,
                    purposes=purposes,
                    source_id=source_id,
                    source="message",
                    effective_at=item.message.timestamp,
                    cause_message_id=item.message.message_id,
                )
                consent_event = change.to_new_event(metadata, id=uuid.uuid5(event_id, "consent"))
                parts.append(StreamAppend(streams.consent_stream(item.subject_id), [consent_event]))
                owners.append(None)
        results = await self._committer.append(parts)
        failure: Exception | None = None
        for part, owner, result in zip(parts, owners, results, strict=True):
            if not isinstance(result, AppendResult | EventIdConflict):
                log.error("append_failed", stream=part.stream, error=str(result))
                failure = result
            elif owner is not None:
                outcomes[owner.index] = _outcome(owner, result, received_at)
            elif isinstance(result, AppendResult) and not result.replayed:
                subject = part.stream.removeprefix(f"{streams.CONSENT}-")
                self._recent_consent[subject] = (result.global_position, consent[subject])
        if failure is not None:
            # The sender retries the whole request; what was appended then comes back as duplicates.
            raise failure

    def _message_event(self, source_id: str, item: _Accepted) -> MessageCollected:
        message = item.message
        return MessageCollected(
            message_id=message.message_id,
            message_type=message.type,
            source_id=source_id,
            subject_id=item.subject_id,
            event_name=message.event,
            timestamp=message.timestamp,
            received_at=message.received_at,
            sent_at=message.sent_at,
            identifiers=item.identifiers,
            payload=seal_payload(self._keyring, item.subject_id, message.personal_payload()),
            plan_violations=tuple(violation.encode() for violation in item.plan_violations),
        )

    def forget_projected(self, position: int) -> None:
        """Drop the in-memory copy of consent changes the read model now holds."""
        self._recent_consent = {s: entry for s, entry in self._recent_consent.items() if entry[0] > position}


def _under(error: InvalidMessage, path: str) -> InvalidMessage:
    """The same rejection with its fields named from `path` (`batch[2].properties.price`)."""
    violations = [
        FieldViolation(f"{path}.{v.field}" if path else v.field, v.description) for v in error.violations
    ]
    return InvalidMessage(violations, error.rejection)


def _new_message_id() -> str:
    """A message id for a message that came without one (it then cannot be deduplicated)."""
    return str(uuid.uuid4())


def _outcome(item: _Accepted, result: AppendResult | EventIdConflict, received_at: datetime) -> Outcome:
    """ACCEPTED when the log stored the message now; DUPLICATE when it held this source's message id already."""
    message_id = item.message.message_id
    if isinstance(result, EventIdConflict) or result.replayed:
        return Outcome(item.index, message_id, Status.DUPLICATE, received_at)
    return Outcome(item.index, message_id, Status.ACCEPTED, received_at, plan_violations=item.plan_violations)


def _with_defaults(raw: Any, defaults: Mapping[str, Any] | None) -> Any:
    """A batch's top-level context, integrations and sentAt apply to each message; the message's own win."""
    if not defaults or not isinstance(raw, Mapping):
        return raw
    merged = dict(raw)
    if defaults.get("sentAt") and not raw.get("sentAt"):
        merged["sentAt"] = defaults["sentAt"]
    for key in ("context", "integrations"):
        shared = defaults.get(key)
        if isinstance(shared, Mapping):
            own = raw.get(key)
            merged[key] = (
                {**shared, **own} if isinstance(own, Mapping) else (own if own is not None else dict(shared))
            )
    return merged


def _rejected(
    index: int, raw: Any, received_at: datetime, reason: Reason, violations: tuple[Any, ...]
) -> Outcome:
    message_id = raw.get("messageId") if isinstance(raw, Mapping) else None
    return Outcome(
        index,
        message_id if isinstance(message_id, str) else None,
        Status.REJECTED,
        received_at,
        reason,
        violations,
    )
