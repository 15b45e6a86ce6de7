"""Use cases of data subject requests: open access and erasure requests, suppress and unsuppress, read them.

Opening a request resolves the person through identity (every identifier, every merged profile), records the
request in its own `dsr-<request id>` stream and wakes the worker that carries it out; the reply comes at once
(state PENDING) and the request's progress is read with GetRequest.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdp import errors
from cdp.eventlog.port import EventStore, ExpectedVersion
from cdp.events import EventMetadata, streams
from cdp.events.governance import (
    AccessCompleted,
    AccessRequested,
    ErasureRequested,
    SubjectSuppressed,
    SubjectUnsuppressed,
)
from cdp.keyring import DecryptionFailed, Keyring
from cdp.keyring import SubjectErased as KeyErased
from cdp.reactor import Reactor
from services.governance.directory import Directory, Person
from services.governance.domain import requests as dsr
from services.governance.domain.requests import Kind, Request
from services.governance.requests import RequestPage, RequestQueries
from services.governance.worker import EXPORT_CONTEXT, RequestWorker


@dataclass(frozen=True)
class Opened:
    """A request just opened, with the person it covers (their identifiers in the clear, for the reply only)."""

    request: Request
    person: Person


class RequestDesk:
    """Where data subject requests are opened and read."""

    def __init__(
        self,
        store: EventStore,
        keyring: Keyring,
        directory: Directory,
        queries: RequestQueries,
        ledger: Reactor,
        worker: RequestWorker,
    ) -> None:
        self._store, self._keyring, self._directory = store, keyring, directory
        self._queries, self._ledger, self._worker = queries, ledger, worker

    async def request_access(self, ref: Any, regulation: str, reference: str, actor: str) -> Opened:
        """Open an access request for the person `ref` names."""
        person = await self._person(ref)
        request_id = _new_id()
        event = AccessRequested(
            request_id=request_id,
            subject_id=person.primary_subject,
            **_covering(person, regulation, reference),
        )
        return await self._open(request_id, [event], person, actor)

    async def request_erasure(
        self, ref: Any, regulation: str, reference: str, suppress: bool, actor: str
    ) -> Opened:
        """Open an erasure request (suppressing the person at once when asked); an open one is returned again."""
        person = await self._person(ref)
        for open_request in await asyncio.to_thread(self._queries.open_requests):
            if open_request.kind is Kind.ERASURE and set(person.subject_ids) <= set(open_request.subject_ids):
                return Opened(open_request, person)  # the same person's erasure is under way: idempotent
        request_id = _new_id()
        requested = ErasureRequested(
            request_id=request_id, suppress=suppress, **_covering(person, regulation, reference)
        )
        events: list[Any] = [requested]
        if suppress:
            events.append(
                SubjectSuppressed(
                    request_id=request_id,
                    subject_ids=person.subject_ids,
                    profile_id=person.profile_id,
                    reason="erasure request",
                    external_reference=reference,
                    requested_at=requested.requested_at,
                )
            )
        return await self._open(request_id, events, person, actor)

    async def suppress(self, ref: Any, reference: str, actor: str) -> Opened:
        """Stop collecting about the person: ingest drops (and counts) their messages from now on."""
        person = await self._person(ref)
        request_id = _new_id()
        event = SubjectSuppressed(
            request_id=request_id,
            subject_ids=person.subject_ids,
            profile_id=person.profile_id,
            reason="suppression request",
            external_reference=reference,
            requested_at=_now(),
        )
        return await self._open(request_id, [event], person, actor)

    async def unsuppress(self, ref: Any, reference: str, actor: str) -> Opened:
        """Lift every suppression covering any identifier of the person (and the identifiers it covered)."""
        person = await self._person(ref)
        suppressing = await asyncio.to_thread(self._queries.suppressing, person.subject_ids)
        # With none in force the request still completes, lifting nothing: unsuppressing is idempotent.
        covered = await asyncio.to_thread(
            self._queries.subjects_of, sorted({r for found in suppressing.values() for r in found})
        )
        request_id = _new_id()
        event = SubjectUnsuppressed(
            request_id=request_id,
            subject_ids=tuple(sorted(covered | set(person.subject_ids))),
            profile_id=person.profile_id,
            reason="unsuppression request",
            external_reference=reference,
            requested_at=_now(),
        )
        return await self._open(request_id, [event], person, actor)

    async def get(self, request_id: str) -> tuple[Request, dict[str, Any] | None]:
        """The request and, for a completed access request, its export (None once the person was erased)."""
        history = await self._worker.history(request_id)
        request = dsr.fold(history)
        if request is None:
            raise errors.NotFound(f"request_id: no request {request_id!r}")
        sealed = [event for event, _, _ in history if isinstance(event, AccessCompleted)]
        if not sealed:
            return request, None
        try:
            export = await asyncio.to_thread(
                self._keyring.decrypt_value, sealed[-1].sealed_for, sealed[-1].export, context=EXPORT_CONTEXT
            )
        except (KeyErased, DecryptionFailed):
            return request, None
        return request, export

    async def page(self, **filters: Any) -> RequestPage:
        """A page of requests (see `RequestQueries.page`), once the read model holds every request so far."""
        await self._ledger.wait_for(await self._store.head_position(), within=10.0)
        return await asyncio.to_thread(lambda: self._queries.page(**filters))

    async def _person(self, ref: Any) -> Person:
        person = await self._directory.find(ref)
        if person is None:
            raise errors.NotFound("subject: no profile with this id")
        return person

    async def _open(self, request_id: str, events: list[Any], person: Person, actor: str) -> Opened:
        metadata = EventMetadata(actor=actor)
        stream = streams.request_stream(request_id)
        await self._store.append(
            stream, [e.to_new_event(metadata) for e in events], ExpectedVersion.NO_STREAM
        )
        self._worker.wake()
        request = await self._worker.read(request_id)
        assert request is not None
        return Opened(request, person)


def _covering(person: Person, regulation: str, reference: str) -> dict[str, Any]:
    """The fields an access or erasure request shares: whom it covers, under which law, due when."""
    at = _now()
    return {
        "subject_ids": person.subject_ids,
        "identifier_types": person.identifier_types,
        "profile_id": person.profile_id,
        "profile_ids": person.profile_ids,
        "regulation": regulation,
        "requested_at": at,
        "due_at": dsr.due_at(at, regulation),
        "external_reference": reference,
    }


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)
