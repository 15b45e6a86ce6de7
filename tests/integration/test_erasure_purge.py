"""Erasure reaches every read model: ingest, identity and segments forget a person, provably, and confirm it.

Two people are collected through the real services (ingest over gRPC, identity and segments following the log
on their own reactors), on SQLite files and on PostgreSQL. Person A's keys are shredded and governance's
`SubjectErased` announced for each of A's subject ids; each service confirms with `ReadModelPurged`. Then no
byte of the data directory (SQLite) and no row of any table (PostgreSQL) holds anything of A, in any encoding
tried, the tables were vacuumed, and B is still served by each service. A confirmation lost to a crash after
the purge committed is given after the restart.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from sqlalchemy import Engine, select

from cdp import sqlengine
from cdp.common.v1 import identity_pb2, message_pb2
from cdp.eventlog import EventStore
from cdp.events import ConsentChanged, EventMetadata, ReadModelPurged, SubjectErased, from_recorded
from cdp.events.streams import consent_stream, request_stream
from cdp.identity.v1 import identity_service_pb2
from cdp.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from cdp.keyring import Keyring, SubjectIds
from cdp.reactor import Reactor
from cdp.reactor.purge import Purges, pending_purges, purged_event_id
from cdp.runtime import resources
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from cdp.segments.v1 import segments_service_pb2 as seg
from cdp.segments.v1 import segments_service_pb2_grpc
from cdp.sqlengine import create_read_model_engine
from services.identity.domain.identifiers import normalise
from services.identity.resolver import Resolver
from services.ingest.main import build as build_ingest
from services.ingest.readmodel import IngestState, consent_state
from services.segments import tables as segment_tables
from services.segments.application import SegmentsApp
from services.segments.main import assemble as assemble_segments
from services.segments.policy import Segmentation
from tests.integration.identity.conftest import ADMIN, Harness, backend, running_harness
from tests.integration.reactor.receipts import Crash
from tests.integration.segments.test_segments_service import semantic_snapshot

__all__ = ["backend"]  # the fixture: SQLite files, or one PostgreSQL schema

T = TypeVar("T")
WRITE_KEY = (("authorization", "Bearer web-key"),)
SERVICES = ("ingest", "identity", "segments")
WITHIN = 120.0
"""Generous: the services follow the log in the background, on a shared machine."""


@dataclass(frozen=True)
class Person:
    user_id: str
    anonymous_id: str
    email: str
    name: str
    phone: str
    second_device: str
    """Browses anonymously, then logs in: a second profile, merged into the first."""

    def traits(self) -> dict[str, Any]:
        return {"email": self.email, "name": self.name, "phone": self.phone, "plan": "pro"}

    def needles(self) -> list[bytes]:
        """Every form of the person's values worth looking for in a file or a row."""
        phone = normalise("phone", self.phone)
        assert phone is not None
        texts = {
            self.user_id,
            self.anonymous_id,
            self.second_device,
            self.email,
            self.email.lower(),
            self.name,
            self.name.split()[-1],  # an ASCII part of the name, whatever escaping the rest got
            self.phone,
            phone,
            phone.lstrip("+"),
        }
        found: set[bytes] = set()
        for value in texts:
            for form in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
                found.add(form.encode())
                found.add(form.encode("utf-16-le"))
                found.add(form.encode("utf-16-be"))
        return sorted(found)

    def subjects(self, ids: SubjectIds) -> list[str]:
        """The person's subject ids, as governance's directory names them."""
        return [
            ids("user_id", self.user_id),
            ids("anonymous_id", self.anonymous_id),
            ids("anonymous_id", self.second_device),
            ids("email", normalise("email", self.email) or ""),
            ids("phone", normalise("phone", self.phone) or ""),
        ]


ERASED = Person(
    user_id="ua-erase-5521",
    anonymous_id="anon-erase-7788",
    email="Zoe.Quillfeather@Erasable.example",
    name="Zoë Quillfeather",
    phone="+1 650 253 0000",
    second_device="tablet-erase-6142",
)
KEPT = Person(
    user_id="ub-keep-9034",
    anonymous_id="anon-keep-4411",
    email="Bartholomew.Keepsake@kept.example",
    name="Bartholomew Keepsake",
    phone="+44 20 7183 8750",
    second_device="tablet-keep-2207",
)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within: float = WITHIN) -> T:
    """Poll until `probe` answers something truthy."""
    deadline = time.monotonic() + within
    while not (found := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return found


def settings_for(path: Path, backend: dict[str, str]) -> Settings:
    """Development settings with every file under `path` (the log and read models on `backend`)."""
    changes: dict[str, Any] = dict(backend)
    env = {"CDP_DATA_DIR": str(path), "CDP_WRITE_KEYS": "web:web-key", "CDP_HTTP_PORT": "0"}
    return replace(Settings.from_env(env), grace_seconds=0.5, **changes)


def message(kind: int, **fields: Any) -> message_pb2.Message:
    return json_format.ParseDict(
        {"type": message_pb2.MessageType.Name(kind), **fields}, message_pb2.Message()
    )


@dataclass
class Cluster:
    settings: Settings
    identity: Harness
    ingest: ingest_service_pb2_grpc.IngestServiceAsyncStub
    segments: segments_service_pb2_grpc.SegmentsServiceAsyncStub
    segments_app: SegmentsApp

    @property
    def store(self) -> EventStore:
        return self.identity.store

    async def collect(self, person: Person, at: datetime) -> None:
        """What a website sends: browsing, an identify with consent, an order — through ingest's gRPC API."""
        consent = {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": True}}}
        replies: list[Any] = [
            await self.ingest.Page(
                ingest_service_pb2.PageRequest(
                    message=message(
                        message_pb2.MESSAGE_TYPE_PAGE,
                        anonymousId=person.anonymous_id,
                        name="Home",
                        timestamp=at.isoformat(),
                    )
                ),
                metadata=WRITE_KEY,
            ),
            await self.ingest.Identify(
                ingest_service_pb2.IdentifyRequest(
                    message=message(
                        message_pb2.MESSAGE_TYPE_IDENTIFY,
                        userId=person.user_id,
                        anonymousId=person.anonymous_id,
                        traits=person.traits(),
                        context=consent,
                        timestamp=(at + timedelta(seconds=1)).isoformat(),
                    )
                ),
                metadata=WRITE_KEY,
            ),
            await self.ingest.Track(
                ingest_service_pb2.TrackRequest(
                    message=message(
                        message_pb2.MESSAGE_TYPE_TRACK,
                        userId=person.user_id,
                        event="Order Completed",
                        properties={"revenue": 150, "ship_to": person.name, "contact": person.email},
                        timestamp=(at + timedelta(seconds=2)).isoformat(),
                    )
                ),
                metadata=WRITE_KEY,
            ),
        ]
        # The second device: its own profile until the login merges it into the first.
        for kind, request, fields in (
            (message_pb2.MESSAGE_TYPE_PAGE, ingest_service_pb2.PageRequest, {"name": "Deals"}),
            (
                message_pb2.MESSAGE_TYPE_IDENTIFY,
                ingest_service_pb2.IdentifyRequest,
                {"userId": person.user_id},
            ),
        ):
            replies.append(
                await self.stub_call(kind)(
                    request(
                        message=message(
                            kind,
                            anonymousId=person.second_device,
                            timestamp=(at + timedelta(seconds=3)).isoformat(),
                            **fields,
                        )
                    ),
                    metadata=WRITE_KEY,
                )
            )
        for reply in replies:
            assert reply.result.status == ingest_service_pb2.MESSAGE_STATUS_ACCEPTED, reply

    def stub_call(self, kind: int) -> Any:
        return self.ingest.Page if kind == message_pb2.MESSAGE_TYPE_PAGE else self.ingest.Identify

    async def profile(self, person: Person) -> identity_service_pb2.GetProfileResponse | None:
        ref = identity_pb2.ProfileRef(
            identifier=identity_pb2.Identifier(
                type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=person.user_id
            )
        )
        try:
            reply: identity_service_pb2.GetProfileResponse = await self.identity.stub.GetProfile(
                identity_service_pb2.GetProfileRequest(profile=ref), metadata=ADMIN
            )
            return reply
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def member(self, profile_id: str) -> bool:
        """Whether segments counts the profile in the audience (an erased profile is not found: no)."""
        try:
            reply = await self.segments.CheckMembership(
                seg.CheckMembershipRequest(
                    profile=identity_pb2.ProfileRef(profile_id=profile_id), audience_ids=["pro_buyers"]
                ),
                metadata=ADMIN,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return bool(reply.memberships[0].member)


@asynccontextmanager
async def running_cluster(settings: Settings) -> AsyncIterator[Cluster]:
    """Identity, segments and ingest on loopback, over one log and one keyring."""
    async with AsyncExitStack() as stack:
        identity = await stack.enter_async_context(running_harness(settings))
        port = int(identity.server.address.rsplit(":", 1)[1])
        segments_service, segments_app = await assemble_segments(replace(settings, identity_port=port))
        servers = [
            GrpcServer(segments_service, settings, port=0),
            GrpcServer(await build_ingest(settings), settings, port=0),
        ]
        for server in servers:
            await server.start()
            stack.push_async_callback(server.stop)
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(server.address)) for server in servers
        ]
        yield Cluster(
            settings,
            identity,
            ingest_service_pb2_grpc.IngestServiceStub(channels[1]),
            segments_service_pb2_grpc.SegmentsServiceStub(channels[0]),
            segments_app,
        )


async def erase(store: EventStore, keyring: Keyring, subjects: list[str], profiles: tuple[str, ...]) -> str:
    """What governance does: shred the person's keys, then announce each subject's erasure in the request."""
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    for subject in subjects:
        await asyncio.to_thread(keyring.shred, subject)
    announcements = [
        SubjectErased(request_id=request_id, subject_id=s, profile_ids=profiles).to_new_event(
            EventMetadata(actor="service:governance")
        )
        for s in subjects
    ]
    await store.append(request_stream(request_id), announcements)
    return request_id


async def confirmations(store: EventStore, request_id: str) -> dict[str, set[str]]:
    """Service → the subjects it confirmed in the request's stream."""
    found: dict[str, set[str]] = {}
    for recorded in await store.read_stream(request_stream(request_id)):
        event = from_recorded(recorded)
        if isinstance(event, ReadModelPurged):
            found.setdefault(event.service, set()).add(event.subject_id)
    return found


async def all_confirmed(
    store: EventStore, request_id: str, subjects: list[str], services: tuple[str, ...]
) -> None:
    async def confirmed() -> bool:
        found = await confirmations(store, request_id)
        return all(found.get(service) == set(subjects) for service in services)

    await eventually(confirmed, f"ReadModelPurged from {', '.join(services)}")


def files_holding(directory: Path, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Every file under `directory` and the needles found in its bytes."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits = [needle for needle in needles if needle in data]
        if hits:
            found[str(path.relative_to(directory))] = hits
    return found


def schema_of(backend: dict[str, str]) -> str:
    return parse_qs(urlsplit(backend["event_store"]).query)["schema"][0]


def rows_holding(schema: str, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Every table of the schema whose rows, cast to text, hold one of the needles."""
    texts = [needle.decode() for needle in needles if _is_utf8(needle)]
    found: dict[str, list[bytes]] = {}
    with psycopg.connect(_postgres_url(), autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            )
        ]
        for table in tables:
            dump = "\n".join(
                str(row[0]) for row in conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t'.encode())
            )
            hits = [text.encode() for text in texts if text in dump]
            if hits:
                found[table] = hits
    return found


def unvacuumed(schema: str, tables: list[str]) -> list[str]:
    with psycopg.connect(_postgres_url(), autocommit=True) as conn:
        vacuumed = {
            row[0]
            for row in conn.execute(
                "SELECT relname FROM pg_stat_user_tables WHERE schemaname = %s AND last_vacuum IS NOT NULL",
                (schema,),
            )
        }
    return sorted(set(tables) - vacuumed)


def _postgres_url() -> str:
    from tests.integration.identity.conftest import POSTGRES

    return POSTGRES


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


def service_tables() -> list[str]:
    from services.identity.readmodel import metadata as identity_metadata

    return sorted(
        {consent_state.name}
        | {t.name for t in identity_metadata.sorted_tables}
        | {t.name for t in segment_tables.metadata.sorted_tables}
    )


async def test_every_read_model_forgets_an_erased_person_and_confirms(
    tmp_path: Path, backend: dict[str, str]
) -> None:
    settings = settings_for(tmp_path, backend)
    async with running_cluster(settings) as cluster:
        await cluster.segments.CreateAudience(
            seg.CreateAudienceRequest(
                audience=seg.Audience(
                    audience_id="pro_buyers",
                    display_name="Pro buyers",
                    expression='traits.plan = "pro" and event("Order Completed").count() >= 1',
                )
            ),
            metadata=ADMIN,
        )
        now = datetime.now(UTC) - timedelta(minutes=5)
        await cluster.collect(ERASED, now)
        await cluster.collect(KEPT, now + timedelta(seconds=10))
        erased_profile = (await eventually(lambda: cluster.profile(ERASED), "A resolved")).profile.profile_id
        kept_profile = (await eventually(lambda: cluster.profile(KEPT), "B resolved")).profile.profile_id
        await eventually(lambda: cluster.member(erased_profile), "A in the audience")
        await eventually(lambda: cluster.member(kept_profile), "B in the audience")
        ids = cluster.identity.ids
        graph = (await cluster.identity.resolver.state()).graph
        merged = [p for p in graph.redirects if graph.resolve(p) == erased_profile]
        assert merged, "the second device's profile was merged into A's"
        profiles_of_a = [erased_profile, *merged]
        needles = ERASED.needles()
        if not backend:  # the values really were there before: the scan can see them
            assert files_holding(tmp_path, needles)

        subjects = ERASED.subjects(ids)
        request_id = await erase(cluster.store, cluster.identity.keyring, subjects, (erased_profile,))
        await all_confirmed(cluster.store, request_id, subjects, SERVICES)

        # B is still served by each service's own queries; A is gone from them.
        kept = await cluster.profile(KEPT)
        assert kept is not None and kept.profile.traits["name"] == KEPT.name
        assert await cluster.profile(ERASED) is None
        assert await cluster.member(kept_profile)
        assert not await cluster.member(erased_profile)
        ingest_engine = resources.read_model_engine(settings, "ingest")
        try:
            consent = await asyncio.to_thread(
                IngestState(ingest_engine).consent_of, [ids("user_id", KEPT.user_id), subjects[0]]
            )
        finally:
            ingest_engine.dispose()
        assert consent == {ids("user_id", KEPT.user_id): {"analytics": True, "advertising": True}}

        # The identity resolver's caches hold none of A's clear values.
        resolution = cluster.identity.resolver.resolution
        caches = repr((resolution.hashes, vars(resolution.identities))).encode()
        assert not [needle for needle in needles if needle in caches]

        # Nothing of A remains: in any file of the data directory, in any row of any table.
        if backend:
            schema = schema_of(backend)
            assert rows_holding(schema, needles) == {}
            assert rows_holding(schema, KEPT.needles())  # the scan sees what is there
            # Ingest's and segments' tables do not even hold A's subject ids (identity keeps tombstones), and no
            # read model names A's profiles (the log does, until governance deletes A's streams).
            opaque = rows_holding(schema, [s.encode() for s in subjects])
            assert not [table for table in opaque if table.startswith(("ingest_", "segments_"))], opaque
            named = rows_holding(schema, [p.encode() for p in profiles_of_a])
            assert not [t for t in named if t.startswith(("ingest_", "identity_", "segments_"))], named
            await eventually(
                lambda: asyncio.to_thread(lambda: not unvacuumed(schema, service_tables())),
                f"vacuumed: {unvacuumed(schema, service_tables())}",
                within=30,
            )
        else:
            assert files_holding(tmp_path, needles) == {}
            assert files_holding(tmp_path, KEPT.needles())  # the scan sees what is there
            # Ingest's and segments' files do not even hold A's subject ids (identity keeps tombstones), and no
            # read model names A's profiles (the log does, until governance deletes A's streams).
            ids_of_a = [s.encode() for s in subjects]
            for service in SERVICES:
                for suffix in ("", "-wal", "-shm"):
                    path = tmp_path / f"{service}.db{suffix}"
                    if path.exists():
                        data = path.read_bytes()
                        if service != "identity":
                            assert not [s for s in ids_of_a if s in data], path
                        assert not [p for p in profiles_of_a if p.encode() in data], path

        # A rebuild from the log (A's events still there, unreadable) equals the live read models.
        resolver = cluster.identity.resolver
        live = await resolver.snapshot()
        await resolver.rebuild()
        assert await resolver.snapshot() == live
        live_segments = await asyncio.to_thread(semantic_snapshot, cluster.segments_app.engine)
        rebuilt_engine = create_read_model_engine(f"sqlite:///{tmp_path / 'rebuilt' / 'segments.db'}")
        try:
            keyring = cluster.identity.keyring
            await Reactor(cluster.store, Segmentation(keyring, rebuilt_engine), rebuilt_engine).catch_up()
            assert await asyncio.to_thread(semantic_snapshot, rebuilt_engine) == live_segments
        finally:
            rebuilt_engine.dispose()
        assert live_segments["members"] == [("pro_buyers", kept_profile)]


# -- a confirmation lost to a crash after the purge committed --------------------------------------------------


def erasing_confirm(purges: Purges) -> Callable[[], Awaitable[int]]:
    """`purges.confirm` that dies (like the process would) when a purge is pending: after the commit, before
    the confirmation."""

    async def confirm() -> int:
        if await asyncio.to_thread(purges._pending):
            raise Crash
        return 0

    return confirm


def pending(engine: Engine) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(pending_purges)).all())


@pytest.fixture
async def log_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = settings_for(tmp_path, {})
    store, keyring = resources.event_store(settings), resources.keyring(settings)
    engine = resources.read_model_engine(settings, "identity")
    resolver = Resolver(store, keyring, resources.subject_ids(settings), engine, batch_size=50)
    try:
        yield Harness(None, None, resolver, store, keyring, resources.subject_ids(settings))  # type: ignore[arg-type]
    finally:
        await store.close()
        keyring.close()
        engine.dispose()


def rig(service: str, h: Harness, engine: Engine) -> Callable[[], tuple[Reactor, Purges]]:
    def start() -> tuple[Reactor, Purges]:
        if service == "identity":
            resolver = Resolver(h.store, h.keyring, h.ids, engine, batch_size=50)
            return resolver.reactor, resolver.resolution.purges
        if service == "ingest":
            purges = Purges("ingest", IngestState.name, h.store, engine, [consent_state])
            return Reactor(h.store, IngestState(engine, purges=purges), engine), purges
        purges = Purges("segments", Segmentation.name, h.store, engine, segment_tables.metadata.sorted_tables)
        return Reactor(h.store, Segmentation(h.keyring, engine, purges), engine), purges

    return start


@pytest.mark.parametrize("service", SERVICES)
async def test_a_purge_committed_but_not_confirmed_is_confirmed_after_a_restart(
    service: str, log_harness: Harness, tmp_path: Path
) -> None:
    h = log_harness
    at = datetime(2026, 1, 5, tzinfo=UTC)
    for person in (ERASED, KEPT):
        await h.collect("identify", at=at, userId=person.user_id, traits=person.traits())
        subject = h.ids("user_id", person.user_id)
        consent = ConsentChanged(subject_id=subject, purposes={"analytics": True}, source_id="web")
        await h.store.append(
            consent_stream(subject), [consent.to_new_event(EventMetadata(actor="source:web"))]
        )
    await h.resolver.catch_up()  # the profile stream segments follows
    profile = (await h.resolver.state()).graph.profile_of(h.ids("user_id", ERASED.user_id))
    assert profile is not None
    subject = h.ids("user_id", ERASED.user_id)
    engine = (
        h.resolver.resolution.engine
        if service == "identity"
        else resources.read_model_engine(settings_for(tmp_path / service, {}), service)
    )
    start = rig(service, h, engine)
    reactor, purges = start()
    await reactor.catch_up()  # everything before the erasure, confirmed as usual (nothing to confirm)
    request_id = await erase(h.store, h.keyring, [subject], (profile,))

    reactor, purges = start()
    purges.confirm = erasing_confirm(purges)  # type: ignore[method-assign,assignment]
    with pytest.raises(Crash):
        await reactor.catch_up()
    assert await asyncio.to_thread(pending, engine) == 1  # the purge committed
    assert await confirmations(h.store, request_id) == {}  # and was not confirmed

    for _ in range(2):  # a restart confirms it; another one does not confirm it twice
        reactor, purges = start()
        await reactor.catch_up()
    assert await asyncio.to_thread(pending, engine) == 0
    recorded = await h.store.read_stream(request_stream(request_id))
    purged = [r for r in recorded if r.type == ReadModelPurged.type_name]
    erased_event = next(r for r in recorded if r.type == SubjectErased.type_name)
    assert [r.id for r in purged] == [purged_event_id(erased_event.id, service)]
    event = from_recorded(purged[0])
    assert isinstance(event, ReadModelPurged)
    assert (event.service, event.subject_id, event.request_id) == (service, subject, request_id)
    assert event.rows_deleted > 0
    if service != "identity":
        engine.dispose()


async def test_a_purge_whose_wal_a_reader_holds_is_confirmed_once_the_reader_is_gone(
    log_harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlengine, "SCRUB_ATTEMPTS", 2)
    monkeypatch.setattr(sqlengine, "SCRUB_BUSY_MS", 1)
    h = log_harness
    subject = h.ids("user_id", ERASED.user_id)
    consent = ConsentChanged(subject_id=subject, purposes={"analytics": True}, source_id="web")
    await h.store.append(consent_stream(subject), [consent.to_new_event(EventMetadata(actor="source:web"))])
    engine = resources.read_model_engine(settings_for(tmp_path / "ingest", {}), "ingest")
    reactor, _ = rig("ingest", h, engine)()
    await reactor.catch_up()
    running = asyncio.create_task(reactor.run())
    try:
        with sqlengine.read_only(engine).connect() as reader:
            reader.execute(select(consent_state)).all()  # a snapshot from before the purge, held open
            request_id = await erase(h.store, h.keyring, [subject], ())

            async def retrying() -> bool:
                status = await reactor.status()
                return status.state == "retrying" and "WAL" in (status.last_error or "")

            await eventually(retrying, "the unfinished scrub retried as an outage")
            assert await confirmations(h.store, request_id) == {}
        found = await eventually(lambda: confirmations(h.store, request_id), "confirmed once the reader left")
        assert found == {"ingest": {subject}}
        assert (tmp_path / "ingest" / "ingest.db-wal").stat().st_size == 0
    finally:
        reactor.stop()
        await running
        engine.dispose()
