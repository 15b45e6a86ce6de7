"""The worker that carries out access and erasure requests, step by step, resumable after a crash at any point.

Each request's `dsr-<request id>` stream is its whole truth: before every step the worker reads and folds it
(`domain.requests.fold`), does the first step not yet recorded, and records it with an event whose id derives
from the request and the step, so a step repeated after a crash appends nothing twice. Every step is idempotent
on its own too (shredding a shredded key, deleting a deleted stream, purging a purged subject).

An erasure, in order:
1. `keys_destroyed`: every data key of every subject of the person is shredded (the keyring's tombstone makes
   ingest refuse their messages from then on, and every copy of the log, backups included, unreadable for them);
2. `announced`: one `SubjectErased` per subject, pseudonymous ids only;
3. `purged:<service>`: each service that holds data about people (ingest, identity, segments, and activation
   once built) forgot them, scrubbed its files and confirmed with `ReadModelPurged`; the worker waits for all;
4. `log_scanned`: the whole log is searched for events naming any of the person's subject or profile ids;
5. `log_erased`: the person's own streams are deleted, their entries cut out of shared events (the profile
   stream's batches), any other event naming them deleted, and the log's files scrubbed;
6. `ErasureCompleted`: the receipt.
The log is erased after the purges so that a message ingest accepted before it dropped its cached key (between
steps 1 and 3) is erased too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from google.protobuf import json_format

from cdp.eventlog.port import EventFilter, EventStore, EventStoreError, RecordedEvent, StreamDeleted
from cdp.events import EventMetadata, from_recorded, streams
from cdp.events.envelope import DomainEvent, UnknownEventType
from cdp.events.governance import (
    AccessCompleted,
    ConsentChanged,
    ErasureCompleted,
    ReadModelPurged,
    RequestStepCompleted,
    RequestStepFailed,
    SubjectErased,
)
from cdp.events.identity import MessagesAttributed
from cdp.events.ingest import MessageCollected
from cdp.events.segments import MembershipChanged
from cdp.faults import describe
from cdp.identity.v1 import identity_service_pb2
from cdp.keyring import DecryptionFailed, Keyring
from cdp.keyring import SubjectErased as KeyErased
from cdp.reactor import Reactor, derived_id
from services.governance.consent import source_of
from services.governance.domain import requests as dsr
from services.governance.domain.requests import Kind, Request, State
from services.governance.requests import RequestQueries

log = structlog.get_logger(__name__)

EXPORT_CONTEXT = "AccessCompleted#export"
"""Associated data of an access export's ciphertext."""
ACTOR = EventMetadata(actor="service:governance")
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Pause before retrying a request whose step failed, by the number of failures in a row."""
IDLE_SECONDS = 2.0
"""How often open requests are looked at when nothing woke the worker (a confirmation it did not hear of)."""

ProfileReader = Callable[[str], Awaitable[identity_service_pb2.Profile | None]]
"""A profile id → identity's whole profile (traits, identifiers, stats), or None when unknown."""
DecisionReader = Callable[[str], Awaitable[list[identity_service_pb2.IdentityDecision]]]
"""A profile id → identity's decisions about it and the profiles merged into it, oldest first."""


class RequestWorker:
    """Carries out open access and erasure requests, one at a time, oldest first."""

    def __init__(
        self,
        store: EventStore,
        keyring: Keyring,
        queries: RequestQueries,
        ledger: Reactor,
        profiles: ProfileReader,
        purgers: Sequence[str],
        decisions: DecisionReader | None = None,
    ) -> None:
        self._store, self._keyring, self._queries, self._ledger = store, keyring, queries, ledger
        self._profiles, self._decisions = profiles, decisions
        self.purgers = tuple(purgers)
        """The services whose `ReadModelPurged` an erasure waits for."""
        self._wake = asyncio.Event()
        self._failures: dict[str, tuple[int, float]] = {}
        """Request id → (failures in a row, monotonic time before which it is not retried)."""
        self._plans: dict[str, _Plan] = {}
        """Request id → the log scan just recorded (`log_scanned`), for the step that erases it."""

    def wake(self) -> None:
        """Something changed (a new request, a confirmation): look at open requests now."""
        self._wake.set()

    async def run(self) -> None:
        """Forever: carry out every open request as far as it can go, then wait to be woken."""
        while True:
            self._wake.clear()
            try:
                await self._ledger.wait_for(await self._store.head_position(), within=30.0)
                for request in await asyncio.to_thread(self._queries.open_requests):
                    await self.carry_out(request.request_id)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the log or the read model away: look again shortly
                log.warning("governance_worker_paused", error=describe(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_SECONDS)

    async def listen(self) -> None:
        """Wake the worker whenever a service confirms a purge (so an erasure moves on at once); a lost
        subscription (the log away) is opened again, and meanwhile the worker still looks every few seconds."""
        while True:
            try:
                head = await self._store.head_position()
                confirmations = EventFilter(event_types=(ReadModelPurged.type_name,))
                async for _ in self._store.subscribe(head, filter=confirmations):
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("governance_listen_paused", error=describe(error))
                await asyncio.sleep(IDLE_SECONDS)

    async def carry_out(self, request_id: str) -> Request | None:
        """Do every step of the request that can be done now; the request as its stream then tells it."""
        failures, not_before = self._failures.get(request_id, (0, 0.0))
        if time.monotonic() < not_before:
            return None
        request = await self.read(request_id)
        if request is None or request.state is State.COMPLETED:
            return request
        step = "?"
        try:
            while request is not None and request.completed_at is None:
                step = self._next_step(request)
                if step == "":  # waiting for confirmations
                    break
                await self._do(request, step)
                request = await self.read(request_id)
            self._failures.pop(request_id, None)
            return request
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures += 1
            pause = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
            self._failures[request_id] = (failures, time.monotonic() + pause)
            log.error("governance_step_failed", request_id=request_id, step=step, error=describe(error))
            failed = RequestStepFailed(
                request_id=request_id,
                step=step,
                error=describe(error)[:500],
                attempt=failures,
                failed_at=_now(),
            )
            await self._record(request_id, failed, f"failed:{step}:{failures}")
            return await self.read(request_id)

    async def read(self, request_id: str) -> Request | None:
        """The request, folded from its stream."""
        return dsr.fold(await self.history(request_id))

    async def history(self, request_id: str) -> list[tuple[DomainEvent, str, datetime]]:
        """The request's stream: each event with its actor and when it was recorded."""
        decoded = []
        for event in await _read(self._store, streams.request_stream(request_id)):
            try:
                decoded.append((from_recorded(event), event.metadata.get("actor", ""), event.recorded_at))
            except UnknownEventType:
                continue
        return decoded

    # -- steps ----------------------------------------------------------------------------------------------

    def _next_step(self, request: Request) -> str:
        """The first step not yet done ("" when the request waits for something else)."""
        if request.kind is Kind.ACCESS:
            return "export"
        for step in (dsr.KEYS_DESTROYED, dsr.ANNOUNCED):
            if not request.done(step):
                return step
        waiting = False
        for service in self.purgers:
            if not request.done(dsr.purged_step(service)):
                if request.purged_by(service):
                    return dsr.purged_step(service)
                waiting = True
        if waiting:
            return ""
        for step in (dsr.LOG_SCANNED, dsr.LOG_ERASED):
            if not request.done(step):
                return step
        return "complete"

    async def _do(self, request: Request, step: str) -> None:
        if step == "export":
            await self._export(request)
        elif step == dsr.KEYS_DESTROYED:
            await asyncio.to_thread(self._shred, request.subject_ids)
            await self._step(request, step, {"subjects": len(request.subject_ids)})
        elif step == dsr.ANNOUNCED:
            await self._announce(request)
        elif step.startswith("purged:"):
            rows = request.rows_purged.get(step.removeprefix("purged:"), 0)
            await self._step(request, step, {"subjects": len(request.subject_ids), "rows": rows})
        elif step == dsr.LOG_SCANNED:
            plan = await self._plan(request)
            await self._step(request, step, plan.counts())
            self._plans[request.request_id] = plan  # erased from at once, without a second scan
        elif step == dsr.LOG_ERASED:
            await self._erase_log(request, self._plans.pop(request.request_id, None))
        elif step == "complete":
            await self._complete(request)

    def _shred(self, subjects: Sequence[str]) -> None:
        for subject in subjects:
            self._keyring.shred(subject)

    async def _announce(self, request: Request) -> None:
        stream = streams.request_stream(request.request_id)
        events = [
            SubjectErased(
                request_id=request.request_id, subject_id=subject, profile_ids=request.profile_ids
            ).to_new_event(ACTOR, id=derived_id(request.request_id, "erased", subject))
            for subject in request.subject_ids
        ]
        if events:
            await self._store.append(stream, events)
        await self._step(request, dsr.ANNOUNCED, {"subjects": len(events)})

    async def _plan(self, request: Request) -> _Plan:
        """What of the person is still in the log: their own streams, shared events naming them."""
        terms = [*request.subject_ids, *request.profile_ids]
        found = await self._store.events_naming(terms, skip_categories=dsr.SKIPPED_CATEGORIES)
        return _Plan(request, found)

    async def _erase_log(self, request: Request, plan: _Plan | None) -> None:
        """Delete and redact what the scan found; after a crash since the scan, scan again (what is left)."""
        if plan is None:
            plan = await self._plan(request)
        for stream in plan.own_streams:
            with contextlib.suppress(StreamDeleted):
                await self._store.delete_stream(stream)
        detail = ""
        changes = plan.changes()
        edited = 0
        if changes:
            try:
                edited = await self._store.erase_events(changes)
            except EventStoreError as error:  # a backend that cannot edit single events (KurrentDB)
                detail = f"{len(changes)} shared events naming the person kept: {describe(error)}"[:500]
        if not await self._store.reclaim():
            # The removed bytes may linger in the log's files (SQLite: readers held the WAL): not done yet.
            raise LogNotReclaimed("the log's files could not be scrubbed yet (readers held them); retrying")
        counts = plan.counts() | {"events_changed": edited}
        await self._step(request, dsr.LOG_ERASED, counts, detail)

    async def _complete(self, request: Request) -> None:
        end = _now()
        started = request.started_at or request.requested_at
        steps = {
            name: {"completed_at": s.completed_at.isoformat() if s.completed_at else None, **dict(s.counts)}
            for name, s in request.steps.items()
        }
        scanned = request.steps[dsr.LOG_SCANNED].counts
        erased = request.steps[dsr.LOG_ERASED]
        receipt: dict[str, Any] = {
            "request_id": request.request_id,
            "regulation": request.regulation,
            "subjects": len(request.subject_ids),
            "identifier_types": sorted(set(request.identifier_types)),
            "profiles": len(request.profile_ids),
            "keys_shredded": len(request.subject_ids),
            "streams_deleted": scanned.get("own_streams", 0),
            "events_deleted": scanned.get("own_events", 0) + scanned.get("shared_deleted", 0),
            "events_redacted": scanned.get("shared_redacted", 0),
            "purged": {s: request.steps[dsr.purged_step(s)].counts.get("rows", 0) for s in self.purgers},
            "log_detail": erased.detail,
            "requested_at": request.requested_at.isoformat(),
            "started_at": started.isoformat(),
            "completed_at": end.isoformat(),
            "due_at": request.due_at.isoformat(),
            "seconds": round((end - started).total_seconds(), 3),
            "steps": steps,
        }
        event = ErasureCompleted(
            request_id=request.request_id,
            receipt=receipt,
            started_at=started,
            completed_at=end,
            deadline_met=end <= request.due_at,
        )
        await self._record(request.request_id, event, "completed")
        log.info(
            "erasure_completed",
            request_id=request.request_id,
            seconds=receipt["seconds"],
            events_deleted=receipt["events_deleted"],
        )

    async def _export(self, request: Request) -> None:
        if not request.done(dsr.STARTED):
            await self._step(request, dsr.STARTED, {})
        export, counts = await self._build_export(request)
        primary = request.subject_ids[0]
        sealed = await asyncio.to_thread(self._keyring.encrypt_value, primary, export, context=EXPORT_CONTEXT)
        event = AccessCompleted(
            request_id=request.request_id,
            sealed_for=primary,
            export=sealed,
            counts=counts,
            completed_at=_now(),
        )
        await self._record(request.request_id, event, "completed")

    async def _build_export(self, request: Request) -> tuple[dict[str, Any], dict[str, int]]:
        """Everything the platform knows about the person, as one JSON document."""
        profile: dict[str, Any] = {}
        decisions: list[dict[str, Any]] = []
        if request.profile_id:
            found = await self._profiles(request.profile_id)
            if found is not None:
                profile = json_format.MessageToDict(found, preserving_proto_field_name=True)
            if self._decisions is not None:
                decisions = [
                    json_format.MessageToDict(d, preserving_proto_field_name=True)
                    for d in await self._decisions(request.profile_id)
                ]
        earlier = [
            {
                "request_id": r.request_id,
                "kind": r.kind.value,
                "state": r.state.value,
                "requested_at": r.requested_at.isoformat(),
                "completed_at": r.completed_at.isoformat() if r.completed_at else None,
                "external_reference": r.external_reference,
            }
            for r in await asyncio.to_thread(self._queries.covering, request.subject_ids)
            if r.request_id != request.request_id
        ]
        messages: list[dict[str, Any]] = []
        consent: list[dict[str, Any]] = []
        unreadable = 0
        for subject in request.subject_ids:
            for recorded in await _read(self._store, streams.subject_stream(subject)):
                event = from_recorded(recorded)
                if isinstance(event, MessageCollected):
                    try:
                        messages.append(await asyncio.to_thread(_message, self._keyring, event))
                    except (KeyErased, DecryptionFailed):
                        unreadable += 1
            for recorded in await _read(self._store, streams.consent_stream(subject)):
                event = from_recorded(recorded)
                if isinstance(event, ConsentChanged):
                    consent.append(_consent(event, recorded))
        memberships: list[dict[str, Any]] = []
        for profile_id in request.profile_ids:
            for recorded in await _read(self._store, streams.membership_stream(profile_id)):
                event = from_recorded(recorded)
                if isinstance(event, MembershipChanged):
                    memberships.append(
                        {
                            "audience_id": event.audience_id,
                            "profile_id": event.profile_id,
                            "entered": event.entered,
                            "reason": event.reason,
                            "computed_at": event.computed_at.isoformat(),
                        }
                    )
        messages.sort(key=lambda m: (m.get("timestamp") or "", m.get("messageId") or ""))
        current = {m["audience_id"]: m["entered"] for m in memberships}
        export = {
            "request_id": request.request_id,
            "generated_at": _now().isoformat(),
            "profile_id": request.profile_id,
            "profile_ids": list(request.profile_ids),
            "profile": profile,
            "identifiers": profile.get("identifiers", []),
            "messages": messages,
            "consent_history": consent,
            "identity_decisions": decisions,
            "requests": earlier,
            "audience_memberships": {
                "current": sorted(a for a, inside in current.items() if inside),
                "history": memberships,
            },
            "deliveries": [],
            "notes": ["deliveries: the activation service records none yet"]
            + ([f"{unreadable} messages could not be decrypted (erased)"] if unreadable else []),
        }
        counts = {
            "messages": len(messages),
            "identifiers": len(export["identifiers"]),
            "consent_changes": len(consent),
            "memberships": len(memberships),
            "identity_decisions": len(decisions),
            "requests": len(earlier),
            "unreadable": unreadable,
        }
        return export, counts

    async def _step(self, request: Request, step: str, counts: Mapping[str, int], detail: str = "") -> None:
        event = RequestStepCompleted(
            request_id=request.request_id, step=step, detail=detail, counts=dict(counts), completed_at=_now()
        )
        await self._record(request.request_id, event, f"step:{step}")

    async def _record(self, request_id: str, event: DomainEvent, key: str) -> None:
        """Append to the request's stream with an id derived from the request and `key` (a retry appends once)."""
        new = event.to_new_event(ACTOR, id=derived_id(request_id, key))
        await self._store.append(streams.request_stream(request_id), [new])


class LogNotReclaimed(Exception):
    """The log could not yet make removed events unrecoverable from its files; the step is retried."""


class _Plan:
    """What an erasure removes from the log, from the events that name the person."""

    def __init__(self, request: Request, found: Sequence[RecordedEvent]) -> None:
        own = set(request.person_streams)
        self.own_streams = sorted({e.stream for e in found if e.stream in own})
        self.own_events = sum(1 for e in found if e.stream in own)
        subjects, profiles = set(request.subject_ids), set(request.profile_ids)
        self.redacted: dict[Any, bytes] = {}
        self.deleted: list[Any] = []
        for event in found:
            if event.stream in own:
                continue
            if event.type == MessagesAttributed.type_name:
                attributed = from_recorded(event)
                assert isinstance(attributed, MessagesAttributed)
                self.redacted[event.id] = dsr.without_person(attributed, subjects, profiles).to_json()
            else:
                self.deleted.append(event.id)

    def changes(self) -> dict[Any, bytes | None]:
        """Event id → its new body (None: delete it)."""
        return {**self.redacted, **dict.fromkeys(self.deleted)}

    def counts(self) -> dict[str, int]:
        """The plan's size, for the receipt."""
        return {
            "own_streams": len(self.own_streams),
            "own_events": self.own_events,
            "shared_redacted": len(self.redacted),
            "shared_deleted": len(self.deleted),
        }


async def _read(store: EventStore, stream: str) -> list[RecordedEvent]:
    try:
        return await store.read_stream(stream)
    except StreamDeleted:
        return []


def _message(keyring: Keyring, event: MessageCollected) -> dict[str, Any]:
    """A collected message as the Segment spec writes it: clear fields and decrypted personal ones."""
    personal = event.open_payload(keyring)
    return {
        "messageId": event.message_id,
        "type": event.message_type,
        **({"event": event.event_name} if event.event_name else {}),
        "timestamp": event.timestamp.isoformat(),
        "receivedAt": event.received_at.isoformat(),
        **({"sentAt": event.sent_at.isoformat()} if event.sent_at else {}),
        "sourceId": event.source_id,
        **personal,
    }


def _consent(event: ConsentChanged, recorded: RecordedEvent) -> dict[str, Any]:
    return {
        "purposes": dict(event.purposes),
        "source": source_of(event),
        "policy_version": event.policy_version,
        "jurisdiction": event.jurisdiction,
        "effective_at": (event.effective_at or recorded.recorded_at).isoformat(),
        "recorded_at": recorded.recorded_at.isoformat(),
        "cause_message_id": event.cause_message_id,
        "actor": recorded.metadata.get("actor", ""),
    }


def _now() -> datetime:
    return datetime.now(UTC)
