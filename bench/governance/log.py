"""Phase `log`: erasure and access export by the real request worker in a log of N events, per backend.

The log is filled the way the platform fills it (see `LogBuilder`), then people are erased one after another by
appending an `ErasureRequested` to `dsr-<id>` and calling `RequestWorker.carry_out`, and one person's access
export is built the same way. No service holds read models here, so the worker waits for no purge
confirmation (`purgers=()`), and the access export's profile part is empty (the profile reader answers None).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import structlog
from sqlalchemy import Engine

from cdp.eventlog import EventStore, StreamAppend, open_event_store
from cdp.eventlog.port import AppendResult, EventStoreError
from cdp.events import EventMetadata, streams
from cdp.events.governance import AccessRequested, ConsentChanged, ErasureRequested
from cdp.events.identity import IdentifierLinked, MessagesAttributed
from cdp.events.ingest import MessageCollected, seal_payload
from cdp.identity.v1 import identity_service_pb2
from cdp.keyring import Keyring, SubjectIds, load_master_key, open_keyring
from cdp.reactor import Reactor
from cdp.sqlengine import create_read_model_engine, create_tables
from services.governance import requests as ledger_tables
from services.governance.domain import requests as dsr
from services.governance.domain.requests import Request, State
from services.governance.requests import RequestLedger, RequestQueries
from services.governance.worker import RETRY_SECONDS, RequestWorker

MESSAGES_PER_PERSON = 20
ANONYMOUS_MESSAGES = 3
"""A person's first messages come before they identify: anonymous-id subject, then user id and e-mail."""
COHORT = 1_000
"""People active at the same time: a cohort's messages interleave, so a person's 20 span ~20,000 events."""
ATTRIBUTION_BATCH = 1_000
"""Messages per `MessagesAttributed` (identity's profile stream), as a resolved batch lists them."""
CONSENT_SHARE = 10
"""One person in this many states consent in a message (a `ConsentChanged`)."""
APPEND_CHUNK = 5_000
"""Events per `append_many` call while loading."""
READ_PAGE = 5_000
"""Events per `read_all` page in the baseline pass."""
PER_PERSON = MESSAGES_PER_PERSON + 3 + 1 / CONSENT_SHARE + MESSAGES_PER_PERSON / ATTRIBUTION_BATCH
"""Events in the log per person: messages, three links, consent, the person's share of attribution batches."""
SOURCE = EventMetadata(actor="source:web")
IDENTITY = EventMetadata(actor="service:identity")
ADMIN = EventMetadata(actor="admin")
ERASURE_STEPS = (dsr.KEYS_DESTROYED, dsr.ANNOUNCED, dsr.LOG_SCANNED, dsr.LOG_ERASED)
STEP_LABELS = {
    dsr.KEYS_DESTROYED: "keys",
    dsr.ANNOUNCED: "announce",
    dsr.LOG_SCANNED: "scan",
    dsr.LOG_ERASED: "erase+reclaim",
}


@dataclass(frozen=True)
class Person:
    """One synthetic person: three subjects (anonymous id, user id, e-mail) on one profile."""

    number: int
    anonymous: str
    user: str
    email: str
    profile_id: str

    @property
    def subjects(self) -> tuple[str, ...]:
        return (self.user, self.email, self.anonymous)

    @property
    def identifier_types(self) -> tuple[str, ...]:
        return ("user_id", "email", "anonymous_id")


class LogBuilder:
    """Fills a log as ingest and identity would, with real sealed payloads; remembers positions and people."""

    def __init__(self, store: EventStore, keyring: Keyring, people: int, seed: int = 13) -> None:
        self.store, self.keyring, self.people = store, keyring, people
        self.ids = SubjectIds(secrets.token_bytes(32))
        self.rng = random.Random(seed)
        self.events = 0
        self.start = datetime(2026, 1, 1, tzinfo=UTC)
        self._profile_of: dict[str, str] = {}
        """Subject id → profile id, for the attribution batches (filled cohort by cohort)."""
        self._pending: list[tuple[int, str, str, str]] = []
        """Attributions not yet published: (position, event id, subject id, profile id)."""
        self._attributed = 0

    def person(self, number: int) -> Person:
        """The person with this number (ids derive from it, so any number can be asked for again)."""
        ids = self.ids
        return Person(
            number,
            ids("anonymous_id", f"anon-{number:08d}"),
            ids("user_id", f"user-{number:08d}"),
            ids("email", f"person{number}@example.com"),
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"cdp-bench-profile-{number}")),
        )

    async def load(self) -> None:
        """Every cohort's messages, links, consent and attribution batches, in big `append_many` calls (the
        next chunk is built while the last one is written)."""
        writing: asyncio.Task[None] | None = None
        batch: list[tuple[StreamAppend, tuple[str, str] | None]] = []
        for first in range(0, self.people, COHORT):
            cohort = [self.person(n) for n in range(first, min(first + COHORT, self.people))]
            self._profile_of.update((s, p.profile_id) for p in cohort for s in p.subjects)
            await self.keyring.prefetch([s for p in cohort for s in (p.anonymous, p.user)])
            for message in self._cohort_messages(cohort):
                batch.append(message)
                if len(batch) >= APPEND_CHUNK:
                    if writing is not None:
                        await writing
                    writing, batch = asyncio.create_task(self._append(batch)), []
        if writing is not None:
            await writing
        if batch:
            await self._append(batch)
        await self._publish(final=True)

    def _cohort_messages(self, cohort: list[Person]) -> Iterator[tuple[StreamAppend, tuple[str, str] | None]]:
        """The cohort's messages round by round (each round in a new order), with identity's links after a
        person's first and first identified message, and consent from some."""
        for round_ in range(MESSAGES_PER_PERSON):
            order = cohort[:]
            self.rng.shuffle(order)
            for person in order:
                yield self._message(person, round_)
                if round_ == 0:
                    yield self._link(person, "anonymous_id", person.anonymous, creates=True), None
                elif round_ == ANONYMOUS_MESSAGES:
                    yield self._link(person, "user_id", person.user), None
                    yield self._link(person, "email", person.email), None
                    if person.number % CONSENT_SHARE == 0:
                        yield self._consent(person), None

    def _message(self, person: Person, round_: int) -> tuple[StreamAppend, tuple[str, str]]:
        at = self.start + timedelta(minutes=person.number + round_ * 90)
        anonymous_id = f"anon-{person.number:08d}"
        identified = round_ >= ANONYMOUS_MESSAGES
        subject = person.user if identified else person.anonymous
        identifiers = {"anonymous_id": person.anonymous}
        personal: dict[str, Any] = {
            "anonymousId": anonymous_id,
            "context": {
                "ip": f"10.0.{person.number % 250}.{round_}",
                "userAgent": "Mozilla/5.0 (X11; Linux)",
            },
        }
        if identified:
            identifiers |= {"user_id": person.user, "email": person.email}
            personal["userId"] = f"user-{person.number:08d}"
        if round_ == ANONYMOUS_MESSAGES:
            kind, name = "identify", None
            personal["traits"] = {
                "email": f"person{person.number}@example.com",
                "name": f"Person {person.number}",
                "phone": f"+4420{person.number:08d}",
            }
        elif round_ % 3 == 0:
            kind, name = "page", "Pricing"
            personal["properties"] = {"path": "/pricing", "title": "Pricing"}
        else:
            kind, name = "track", ("Product Viewed", "Order Completed")[round_ % 2]
            personal["properties"] = {"sku": f"sku-{round_ % 50}", "revenue": round_ * 3}
        message = MessageCollected(
            message_id=f"m-{person.number}-{round_}",
            message_type=kind,
            source_id="web",
            subject_id=subject,
            event_name=name if kind != "identify" else None,
            timestamp=at,
            received_at=at,
            identifiers=identifiers,
            payload=seal_payload(self.keyring, subject, personal),
        )
        event = message.to_new_event(SOURCE)
        part = StreamAppend(streams.subject_stream(subject), [event])
        return part, (str(event.id), subject)

    def _link(self, person: Person, kind: str, subject: str, creates: bool = False) -> StreamAppend:
        event = IdentifierLinked(
            profile_id=person.profile_id,
            identifier_type=kind,
            subject_id=subject,
            causing_message_id=f"m-{person.number}-0",
            creates_profile=creates,
            seen_at=self.start,
        )
        return StreamAppend(streams.profile_stream(person.profile_id), [event.to_new_event(IDENTITY)])

    def _consent(self, person: Person) -> StreamAppend:
        event = ConsentChanged(
            subject_id=person.user,
            purposes={"analytics": True, "advertising": False},
            source_id="web",
            source="message",
            cause_message_id=f"m-{person.number}-{ANONYMOUS_MESSAGES}",
        )
        return StreamAppend(streams.consent_stream(person.user), [event.to_new_event(SOURCE)])

    async def _append(self, batch: list[tuple[StreamAppend, tuple[str, str] | None]]) -> None:
        results = await self.store.append_many([part for part, _ in batch])
        for (part, message), result in zip(batch, results, strict=True):
            if isinstance(result, EventStoreError):
                raise result
            self.events += len(part.events)
            if message is not None:
                assert isinstance(result, AppendResult)
                self._pending.append(
                    (result.global_position, message[0], message[1], self._profile_of[message[1]])
                )
        await self._publish()

    async def _publish(self, final: bool = False) -> None:
        """Identity's profile stream: one `MessagesAttributed` per ATTRIBUTION_BATCH messages."""
        parts = []
        while len(self._pending) >= ATTRIBUTION_BATCH or (final and self._pending):
            entries, self._pending = self._pending[:ATTRIBUTION_BATCH], self._pending[ATTRIBUTION_BATCH:]
            event = MessagesAttributed(
                after_position=self._attributed,
                through_position=entries[-1][0],
                positions=tuple(e[0] for e in entries),
                event_ids=tuple(e[1] for e in entries),
                subject_ids=tuple(e[2] for e in entries),
                profile_ids=tuple(e[3] for e in entries),
            )
            self._attributed = entries[-1][0]
            parts.append(StreamAppend(streams.attribution_stream(), [event.to_new_event(IDENTITY)]))
        for part in parts:  # one stream: parts are sequential appends of it
            await self.store.append(part.stream, part.events)
            self.events += 1


def people_for(events: int) -> int:
    """How many people make a log of about `events` events."""
    return max(10, round(events / PER_PERSON))


@dataclass
class Outcome:
    """One request carried out: wall seconds, the request as its stream tells it, failures on the way."""

    seconds: float
    request: Request | None
    failures: list[str]

    @property
    def completed(self) -> bool:
        return self.request is not None and self.request.state is State.COMPLETED


async def no_profile(profile_id: str) -> identity_service_pb2.Profile | None:
    """No identity service in this phase: every profile is unknown (the export's profile part is empty)."""
    return None


async def carry_out(worker: RequestWorker, request_id: str, attempts: int = 4) -> Outcome:
    """`carry_out` until the request completes; a failed step (e.g. the log not reclaimed yet) is retried
    after the worker's own pause, and the failure is reported."""
    failures: dict[str, None] = {}
    began = time.perf_counter()
    request = None
    for attempt in range(attempts):
        request = await worker.carry_out(request_id) or request
        if request is not None and request.state is State.COMPLETED:
            break
        if request is not None:
            failures.update((f"{s.name}: {s.error}", None) for s in request.steps.values() if s.error)
        await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)] + 0.1)
    return Outcome(time.perf_counter() - began, request, list(failures))


async def erase(store: EventStore, worker: RequestWorker, person: Person) -> tuple[Outcome, datetime]:
    """Append the person's `ErasureRequested` and carry it out; the outcome and when it was asked."""
    request_id = uuid.uuid4().hex
    asked = datetime.now(UTC)
    event = ErasureRequested(
        request_id=request_id,
        subject_ids=person.subjects,
        identifier_types=person.identifier_types,
        profile_id=person.profile_id,
        profile_ids=(person.profile_id,),
        requested_at=asked,
    )
    began = time.perf_counter()
    await store.append(streams.request_stream(request_id), [event.to_new_event(ADMIN)])
    outcome = await carry_out(worker, request_id)
    outcome.seconds = time.perf_counter() - began
    return outcome, asked


async def export(store: EventStore, worker: RequestWorker, person: Person) -> Outcome:
    """Append the person's `AccessRequested` and carry it out (the export is built and sealed)."""
    request_id = uuid.uuid4().hex
    event = AccessRequested(
        request_id=request_id,
        subject_id=person.user,
        subject_ids=person.subjects,
        identifier_types=person.identifier_types,
        profile_id=person.profile_id,
        profile_ids=(person.profile_id,),
        requested_at=datetime.now(UTC),
    )
    began = time.perf_counter()
    await store.append(streams.request_stream(request_id), [event.to_new_event(ADMIN)])
    outcome = await carry_out(worker, request_id)
    outcome.seconds = time.perf_counter() - began
    return outcome


async def full_read(store: EventStore) -> tuple[float, int]:
    """The baseline: one pass over the whole log with `read_all` in pages; seconds and events read."""
    began, position, count = time.perf_counter(), 0, 0
    while page := await store.read_all(position, limit=READ_PAGE):
        count += len(page)
        position = page[-1].global_position
    return time.perf_counter() - began, count


def step_seconds(request: Request, asked: datetime) -> dict[str, float]:
    """Seconds each erasure step took, from its `completed_at` and the one before (the first from `asked`)."""
    spent: dict[str, float] = {}
    before = asked
    for name in ERASURE_STEPS:
        step = request.steps.get(name)
        if step is None or step.completed_at is None:
            continue
        spent[name] = (step.completed_at - before).total_seconds()
        before = step.completed_at
    if request.completed_at is not None:
        spent["receipt"] = (request.completed_at - before).total_seconds()
    return spent


def print_erasure(number: int, where: float, outcome: Outcome, asked: datetime, baseline: float) -> None:
    request = outcome.request
    verdict = "" if outcome.completed else "   NOT COMPLETED"
    print(
        f"  erase person #{number:,} ({where:.0%} into the log) {outcome.seconds:8.3f} s"
        f"  ({outcome.seconds / baseline:.2f}x a full read)   target < 5 s{verdict}"
    )
    for failure in outcome.failures:
        print(f"      step failed on the way: {failure[:200]}")
    if request is None:
        return
    spent = step_seconds(request, asked)
    print("      " + "   ".join(f"{STEP_LABELS.get(k, k)} {v:.3f} s" for k, v in spent.items()))
    receipt = request.receipt
    if receipt:
        print(
            f"      receipt: {receipt.get('keys_shredded')} keys shredded, {receipt.get('streams_deleted')} streams"
            f" and {receipt.get('events_deleted')} events deleted, {receipt.get('events_redacted')} shared"
            f" events redacted; receipt seconds {receipt.get('seconds')}"
        )


async def run_backend(label: str, url: str, events: int, erasures: int, folder: Path) -> None:
    """Fill the log at `url`, then time the baseline, the erasures and one access export."""
    store = open_event_store(url)
    keyring = open_keyring(
        f"sqlite:///{folder / 'keyring.db'}", load_master_key(secrets.token_hex(32)), cache_size=200_000
    )
    engine: Engine = create_read_model_engine(f"sqlite:///{folder / 'governance.db'}")
    create_tables(ledger_tables.metadata, engine)
    try:
        builder = LogBuilder(store, keyring, people_for(events))
        began = time.perf_counter()
        await builder.load()
        loaded = time.perf_counter() - began
        print(
            f"\n{label}: {builder.events:,} events ({builder.people:,} people x {MESSAGES_PER_PERSON} messages,"
            f" identity's links and attribution batches, consent) loaded in {loaded:.1f} s"
            f" ({builder.events / loaded:,.0f} events/s)"
        )
        if url.startswith("postgresql"):
            await asyncio.to_thread(analyze, url)  # what autovacuum does to a table this size soon enough
        ledger = Reactor(store, RequestLedger(), engine)
        worker = RequestWorker(store, keyring, RequestQueries(engine), ledger, no_profile, purgers=())
        baseline, read = await full_read(store)
        print(f"  baseline: one read_all pass over the log     {baseline:8.3f} s  ({read:,} events)")
        print("  (no service holds read models in this phase: purgers=(), no purge confirmation is awaited)")
        shares = (0.5, 0.25, 0.75, 0.1, 0.9)[: max(1, erasures)]
        for where in shares:
            person = builder.person(int(builder.people * where))
            outcome, asked = await erase(store, worker, person)
            print_erasure(person.number, where, outcome, asked, baseline)
        other = builder.person(
            int(builder.people * 0.6) // CONSENT_SHARE * CONSENT_SHARE
        )  # one who consented
        access = await export(store, worker, other)
        counts = dict(access.request.export_counts) if access.request else {}
        verdict = "" if access.completed else "   NOT COMPLETED"
        print(
            f"  access export of person #{other.number:,}        {access.seconds:8.3f} s"
            f"  ({access.seconds / baseline:.2f}x a full read){verdict}"
        )
        print(f"      export counts: {counts}; the profile part is empty here (no identity service)")
        for failure in access.failures:
            print(f"      step failed on the way: {failure[:200]}")
    finally:
        await store.close()
        keyring.close()
        engine.dispose()


def analyze(url: str) -> None:
    """Planner statistics for the log's tables, as a running installation has them (autovacuum analyses a
    table once a tenth of it changed): without them PostgreSQL plans a fresh 1M-event table as a tiny one."""
    base, _, query = url.partition("?")
    schema = dict(part.split("=", 1) for part in query.split("&") if "=" in part).get("schema", "public")
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f"ANALYZE {schema}.events".encode())
        connection.execute(f"ANALYZE {schema}.streams".encode())


def run(events: int, backends: list[str], postgres: str, erasures: int) -> list[str]:
    """The phase on each backend; the backends that failed (each failure is printed, never raised)."""
    # The worker's own log lines (one per erasure) would break up the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    failed = []
    for backend in backends:
        try:
            with tempfile.TemporaryDirectory(prefix="cdp-bench-governance-") as directory:
                folder = Path(directory)
                if backend == "sqlite":
                    url = f"sqlite:///{folder / 'events.db'}"
                    asyncio.run(run_backend("SQLite log", url, events, erasures, folder))
                elif backend == "postgres":
                    asyncio.run(postgres_backend(postgres, events, erasures, folder))
                else:
                    raise ValueError(f"unknown backend {backend!r} (sqlite, postgres)")
        except Exception as error:
            traceback.print_exc()
            print(f"\nphase log on {backend} FAILED: {type(error).__name__}: {error}")
            failed.append(backend)
    return failed


async def postgres_backend(postgres: str, events: int, erasures: int, folder: Path) -> None:
    """The same on a throwaway PostgreSQL schema, dropped afterwards."""
    import psycopg

    schema = f"bench_governance_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in postgres else "?"
    try:
        await run_backend(
            f"PostgreSQL log (schema {schema})",
            f"{postgres}{separator}schema={schema}",
            events,
            erasures,
            folder,
        )
    finally:
        async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
