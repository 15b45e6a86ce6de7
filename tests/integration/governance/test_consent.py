"""Consent through real gRPC servers on loopback (ingest, identity and governance's consent RPCs), on both logs.

The governance server here serves what `build_consent` builds (the same parts `services.governance.main` wires),
so the test can also reach behind it: the consent reactor and its read model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import Engine, select

from cdp.common.v1 import identity_pb2, message_pb2
from cdp.eventlog import EventStore
from cdp.eventlog.port import EventFilter
from cdp.events import ConsentChanged, EventMetadata, SubjectErased, from_recorded
from cdp.governance.v1 import governance_service_pb2 as pb
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.ingest.v1 import ingest_service_pb2 as ingest_pb
from cdp.keyring import SubjectIds
from cdp.reactor import Reactor
from cdp.runtime import resources
from cdp.runtime.errors import field_violations
from cdp.runtime.server import GrpcServer, ServiceApp
from cdp.runtime.settings import Settings
from cdp.sqlengine import create_read_model_engine
from services.governance.consent import ConsentProjection, build_consent, changes
from services.governance.consent_rpcs import ConsentRpcs
from services.governance.directory import Directory, identity_lookup
from services.governance.grpc_api import SERVICE, GovernanceServicer
from tests.integration.identity.conftest import backend, running_harness
from tests.integration.ingest.conftest import WRITE_KEY, message, running_ingest
from tests.waiting import eventually

__all__ = ["backend"]

ADMIN = (("authorization", "Bearer dev-admin-token"),)
GRANTED, DENIED = pb.CONSENT_STATE_GRANTED, pb.CONSENT_STATE_DENIED


class ConsentServicer(GovernanceServicer):
    """The governance servicer with only the consent methods served (the request desk is not needed here)."""

    def __init__(self, rpcs: ConsentRpcs) -> None:
        self.SetConsent = rpcs.SetConsent
        self.GetConsent = rpcs.GetConsent
        self.GetConsentHistory = rpcs.GetConsentHistory


@dataclass
class Stack:
    governance: governance_service_pb2_grpc.GovernanceServiceAsyncStub
    ingest: Any
    reactor: Reactor
    log: EventStore
    engine: Engine
    subject: SubjectIds

    async def set(self, user: str, consents: dict[str, bool], **fields: Any) -> pb.Consent:
        request = pb.SetConsentRequest(subject=user_ref(user), **fields)
        for purpose, granted in consents.items():
            request.consents.add(purpose=purpose, state=GRANTED if granted else DENIED)
        reply = await self.governance.SetConsent(request, metadata=ADMIN)
        return reply.consent

    async def get(self, ref: identity_pb2.ProfileRef, **fields: Any) -> dict[str, pb.PurposeConsent]:
        reply = await self.governance.GetConsent(pb.GetConsentRequest(subject=ref, **fields), metadata=ADMIN)
        return {p.purpose: p for p in reply.consent.purposes}

    async def history(self, ref: identity_pb2.ProfileRef, **fields: Any) -> pb.GetConsentHistoryResponse:
        request = pb.GetConsentHistoryRequest(subject=ref, **fields)
        reply: pb.GetConsentHistoryResponse = await self.governance.GetConsentHistory(request, metadata=ADMIN)
        return reply


def user_ref(user: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(
        identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user)
    )


def anonymous_ref(anonymous: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(
        identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, value=anonymous)
    )


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(moment)
    return result


@pytest.fixture
async def stack(tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Stack]:
    env = {"CDP_DATA_DIR": str(tmp_path), "CDP_WRITE_KEYS": "web:web-key", "CDP_HTTP_PORT": "0"}
    env.update({f"CDP_{name.upper()}": value for name, value in backend.items()})
    settings = replace(Settings.from_env(env), grace_seconds=0.5)
    async with running_harness(settings) as identity, running_ingest(settings) as ingest:
        store, engine = resources.event_store(settings), resources.read_model_engine(settings, "governance")
        channel = grpc.aio.insecure_channel(identity.server.address)
        directory = Directory(
            identity_lookup(channel, settings.admin_token, 5.0), resources.subject_ids(settings)
        )
        reactor, rpcs = await build_consent(settings, store, engine, directory)
        add = governance_service_pb2_grpc.add_GovernanceServiceServicer_to_server
        app = ServiceApp(
            name="governance", servicers=[(add, ConsentServicer(rpcs), SERVICE.full_name)], reactors=[reactor]
        )
        server = GrpcServer(app, settings, port=0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as governance:
                stub = governance_service_pb2_grpc.GovernanceServiceStub(governance)
                yield Stack(stub, ingest, reactor, store, engine, resources.subject_ids(settings))
        finally:
            await server.stop()
            await channel.close(None)
            await store.close()
            engine.dispose()


async def test_set_get_as_of_and_history(stack: Stack) -> None:
    before = datetime.now(UTC) - timedelta(days=2)
    first = await stack.set(
        "u-1",
        {"analytics": True, "advertising": False},
        source="cmp:onetrust",
        policy_version="2025-01",
        jurisdiction="eu",
        effective_time=stamp(before),
    )
    assert {p.purpose: p.state for p in first.purposes if not p.is_default} == {
        "analytics": GRANTED,
        "advertising": DENIED,
    }
    await stack.set("u-1", {"analytics": False}, policy_version="2025-02")

    now = await stack.get(user_ref("u-1"))
    assert now["analytics"].state == DENIED and now["analytics"].source == "api"
    assert now["analytics"].policy_version == "2025-02" and now["analytics"].jurisdiction == "eu"
    assert now["marketing"].is_default and now["marketing"].state == DENIED  # eu is opt-in
    then = await stack.get(user_ref("u-1"), as_of=stamp(before + timedelta(hours=1)))
    assert then["analytics"].state == GRANTED and then["analytics"].source == "cmp:onetrust"
    earlier = await stack.get(user_ref("u-1"), as_of=stamp(before - timedelta(hours=1)))
    assert all(p.is_default for p in earlier.values())

    history = await stack.history(user_ref("u-1"), purpose="analytics")
    assert [(c.previous_state, c.state, c.source, c.policy_version) for c in history.changes] == [
        (pb.CONSENT_STATE_UNSPECIFIED, GRANTED, "cmp:onetrust", "2025-01"),
        (GRANTED, DENIED, "api", "2025-02"),
    ]
    assert all(c.actor.id == "admin" and c.jurisdiction == "eu" for c in history.changes)
    page = await stack.history(user_ref("u-1"), page={"page_size": 2})
    rest = await stack.history(
        user_ref("u-1"), page={"page_size": 2, "page_token": page.page.next_page_token}
    )
    assert len(page.changes) == 2 and len(rest.changes) == 1 and not rest.page.next_page_token
    recent = await stack.history(user_ref("u-1"), time_range={"start": stamp(before + timedelta(days=1))})
    assert [c.policy_version for c in recent.changes] == ["2025-02"]


async def test_consent_stated_by_a_message_is_recorded_with_its_cause(stack: Stack) -> None:
    stated = message(
        message_pb2.MESSAGE_TYPE_IDENTIFY,
        userId="u-2",
        anonymousId="a-2",
        messageId="consent-msg-1",
        context={"consent": {"categoryPreferences": {"analytics": True, "Advertising": False}}},
    )
    reply = await stack.ingest.stub.Batch(ingest_pb.BatchRequest(messages=[stated]), metadata=WRITE_KEY)
    assert len(reply.results) == 1

    async def recorded() -> bool:
        changes = (await stack.history(anonymous_ref("a-2"))).changes
        return len(changes) == 2

    await eventually(recorded)
    history = await stack.history(user_ref("u-2"))
    assert {c.purpose: c.state for c in history.changes} == {"analytics": GRANTED, "advertising": DENIED}
    assert {(c.source, c.cause_message_id, c.actor.id) for c in history.changes} == {
        ("message", "consent-msg-1", "web")
    }
    events = [
        from_recorded(e)
        for e in await stack.log.read_all(filter=EventFilter(event_types=("ConsentChanged",)))
    ]
    assert [e.source for e in events if isinstance(e, ConsentChanged)] == ["message"]

    # The person's other identifier: a later decision under it wins over the message's (latest effective).
    await eventually(lambda: _knows_both(stack))
    await stack.set("u-2", {"advertising": True})
    merged = await stack.get(anonymous_ref("a-2"))
    assert merged["advertising"].state == GRANTED and merged["analytics"].state == GRANTED


async def _knows_both(stack: Stack) -> bool:
    reply = await stack.governance.GetConsent(pb.GetConsentRequest(subject=user_ref("u-2")), metadata=ADMIN)
    return bool(reply.consent.profile_id)


async def test_defaults_per_jurisdiction(stack: Stack) -> None:
    eu = await stack.get(user_ref("nobody"), jurisdiction="eu")
    ca = await stack.get(user_ref("nobody"), jurisdiction="us-ca")
    assert {p.state for p in eu.values()} == {DENIED} and all(p.is_default for p in eu.values())
    assert {p.state for p in ca.values()} == {GRANTED}
    assert set(eu) == {
        "analytics",
        "advertising",
        "marketing",
        "personalization",
        "functional",
        "sale_of_data",
    }
    await stack.set("u-3", {"sale_of_data": False}, jurisdiction="us-ca")
    decided = await stack.get(user_ref("u-3"))
    assert decided["sale_of_data"].state == DENIED and not decided["sale_of_data"].is_default
    assert decided["analytics"].state == GRANTED and decided["analytics"].is_default  # the decision's regime


async def test_a_retried_set_consent_appends_once(stack: Stack) -> None:
    for _ in range(2):
        await stack.set("u-4", {"marketing": True}, idempotency_key="retry-1")
    history = await stack.history(user_ref("u-4"))
    assert len(history.changes) == 1


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"consents": []}, "consents"),
        ({"consents": [pb.PurposeConsent(purpose="analytcs", state=GRANTED)]}, "consents[0].purpose"),
        ({"consents": [pb.PurposeConsent(purpose="analytics")]}, "consents[0].state"),
        ({"jurisdiction": "mars"}, "jurisdiction"),
        ({"source": "message"}, "source"),
        ({"policy_version": "v 1"}, "policy_version"),
        ({"effective_time": stamp(datetime.now(UTC) + timedelta(days=1))}, "effective_time"),
    ],
)
async def test_bad_input_names_the_field(stack: Stack, fields: dict[str, Any], path: str) -> None:
    request = pb.SetConsentRequest(subject=user_ref("u-5"))
    request.consents.add(purpose="analytics", state=GRANTED)
    for name, value in fields.items():
        if name == "consents":
            del request.consents[:]
            request.consents.extend(value)
        elif name == "effective_time":
            request.effective_time.CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.governance.SetConsent(request, metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert path in [field for field, _ in field_violations(raised.value)]


async def test_unknown_profile_and_missing_token(stack: Stack) -> None:
    missing = identity_pb2.ProfileRef(profile_id="00000000-0000-0000-0000-000000000000")
    request = pb.SetConsentRequest(
        subject=missing, consents=[pb.PurposeConsent(purpose="analytics", state=GRANTED)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.governance.SetConsent(request, metadata=ADMIN)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert all(p.is_default for p in (await stack.get(missing)).values())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.governance.GetConsent(pb.GetConsentRequest(subject=missing))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rebuild_equals_live_and_erasure_deletes_the_subjects_history(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.set("u-6", {"analytics": True, "functional": True})
    await stack.set("u-6", {"analytics": False}, jurisdiction="us")
    await stack.set("u-7", {"marketing": True})
    rebuilt = create_read_model_engine(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    try:
        await Reactor(stack.log, ConsentProjection(), rebuilt).catch_up()
        assert _rows(rebuilt) == _rows(stack.engine) and len(_rows(rebuilt)) == 4
    finally:
        rebuilt.dispose()

    subject = stack.subject("user_id", "u-6")
    erased = SubjectErased(request_id="r-1", subject_id=subject)
    result = await stack.log.append("dsr-r-1", [erased.to_new_event(EventMetadata(actor="admin"))])
    await stack.reactor.wait_for(result.global_position, within=60)
    assert [row.subject_id for row in _rows(stack.engine)] == [stack.subject("user_id", "u-7")]
    assert len((await stack.history(user_ref("u-6"))).changes) == 0


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(changes).order_by(changes.c.position, changes.c.purpose)))
