"""Segments on loopback beside identity, over one SQLite log: define, evaluate live, follow merges and windows."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from sqlalchemy import Engine, select

from cdp.common.v1 import identity_pb2
from cdp.reactor import Reactor
from cdp.runtime.server import GrpcServer
from cdp.segments.v1 import segments_service_pb2 as pb
from cdp.segments.v1 import segments_service_pb2_grpc
from cdp.sqlengine import create_read_model_engine
from services.segments import tables as t
from services.segments.application import SegmentsApp
from services.segments.main import assemble
from services.segments.policy import Segmentation
from tests.integration.identity.conftest import ADMIN, Harness, running_harness, settings_for

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within: float = 60.0) -> T:
    """Poll until `probe` answers something truthy (the evaluator follows the log in the background)."""
    deadline = time.monotonic() + within
    while not (found := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return found


class Cluster:
    """Identity and segments servers, the identity harness to collect messages, a segments stub."""

    def __init__(
        self,
        identity: Harness,
        stub: segments_service_pb2_grpc.SegmentsServiceAsyncStub,
        app: SegmentsApp,
        tmp: Path,
    ):
        self.identity, self.stub, self.app, self.tmp = identity, stub, app, tmp

    async def member(self, profile_id: str, audience_id: str) -> bool:
        reply = await self.stub.CheckMembership(
            pb.CheckMembershipRequest(
                profile=identity_pb2.ProfileRef(profile_id=profile_id), audience_ids=[audience_id]
            ),
            metadata=ADMIN,
        )
        return bool(reply.memberships[0].member)


@pytest.fixture
async def cluster(tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Cluster]:
    """On SQLite files, and on one PostgreSQL schema (log and read models) — `backend`'s two params."""
    async with running_harness(settings_for(tmp_path, **backend)) as identity:
        port = int(identity.server.address.rsplit(":", 1)[1])
        settings = replace(settings_for(tmp_path, **backend), identity_port=port)
        service, app = await assemble(settings)
        server = GrpcServer(service, settings, port=0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub: segments_service_pb2_grpc.SegmentsServiceAsyncStub = (
                    segments_service_pb2_grpc.SegmentsServiceStub(channel)
                )
                yield Cluster(identity, stub, app, tmp_path)
        finally:
            await server.stop()


async def profile_of(cluster: Cluster, user: str) -> str:
    async def found() -> str | None:
        await cluster.identity.settle()
        ref = identity_pb2.ProfileRef(
            identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user)
        )
        try:
            reply = await cluster.identity.stub.GetProfile(
                __import__("cdp.identity.v1.identity_service_pb2", fromlist=["x"]).GetProfileRequest(
                    profile=ref
                ),
                metadata=ADMIN,
            )
        except grpc.aio.AioRpcError:
            return None
        return str(reply.profile.profile_id)

    return await eventually(found, f"identity resolved {user}")


async def test_an_audience_in_the_language_follows_events_merges_and_windows(cluster: Cluster) -> None:
    stub, identity = cluster.stub, cluster.identity
    await stub.DefineComputedTrait(
        pb.DefineComputedTraitRequest(
            computed_trait=pb.ComputedTrait(
                computed_trait_id="lifetime_value", expression='event("Order Completed").sum("revenue")'
            )
        ),
        metadata=ADMIN,
    )
    expression = (
        'traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 '
        'and trait("lifetime_value") > 100'
    )
    created = await stub.CreateAudience(
        pb.CreateAudienceRequest(
            audience=pb.Audience(
                audience_id="big_spenders", display_name="Big spenders", expression=expression
            )
        ),
        metadata=ADMIN,
    )
    assert created.audience.state == pb.AUDIENCE_STATE_ACTIVE and created.audience.size == 0
    watched: list[pb.WatchMembershipsResponse] = []

    async def watch() -> None:
        request = pb.WatchMembershipsRequest(audience_ids=["big_spenders"])
        async for change in stub.WatchMemberships(request, metadata=ADMIN):
            watched.append(change)

    watching = asyncio.create_task(watch())
    now = datetime.now(UTC)
    await identity.collect("identify", at=now, userId="u1", traits={"plan": "pro"})
    # One order well inside the window, one that leaves it a few seconds from now.
    await identity.collect("track", at=now, event="Order Completed", userId="u1", properties={"revenue": 80})
    leaving = now - timedelta(days=30) + timedelta(seconds=4)
    await identity.collect(
        "track", at=leaving, event="Order Completed", userId="u1", properties={"revenue": 40}
    )
    profile = await profile_of(cluster, "u1")

    async def entered() -> bool:
        return await cluster.member(profile, "big_spenders")

    await eventually(entered, "u1 entered big_spenders")
    members = [
        m async for m in stub.ListMembers(pb.ListMembersRequest(audience_id="big_spenders"), metadata=ADMIN)
    ]
    assert [m.profile_id for chunk in members for m in chunk.members] == [profile]
    preview = await stub.PreviewAudience(
        pb.PreviewAudienceRequest(expression=expression, sample_size=5), metadata=ADMIN
    )
    assert preview.size == 1 and list(preview.sample_profile_ids) == [profile]

    # A second, anonymous visitor who bought for 500 joins u1 by an alias: the merged history still qualifies.
    async def exited() -> bool:
        await cluster.app.tick()
        return not await cluster.member(profile, "big_spenders")

    await eventually(exited, "u1 exited big_spenders as its older order left the 30-day window", within=60)
    await cluster.app.reactor.wait_for(await identity.store.head_position(), within=60)  # changes recorded
    stats = await stub.GetAudienceStats(
        pb.GetAudienceStatsRequest(audience_id="big_spenders"), metadata=ADMIN
    )
    assert (stats.size, stats.entered_count, stats.exited_count) == (0, 1, 1)

    await identity.collect(
        "track", at=now, event="Order Completed", anonymousId="anon-9", properties={"revenue": 500}
    )
    await identity.collect("alias", at=now, userId="u1", previousId="anon-9", anonymousId="anon-9")
    await eventually(entered, "u1 re-entered big_spenders once anon-9's order merged into its profile")

    # The watch saw the three changes as they happened, with why; resumed after the first, it replays the rest.
    async def three() -> bool:
        return len(watched) >= 3

    await eventually(three, "the watch saw u1 enter, leave and re-enter")
    watching.cancel()
    seen = [(c.profile_id, c.kind, c.reason) for c in watched]
    assert seen == [
        (profile, pb.MEMBERSHIP_CHANGE_KIND_ENTERED, "event"),
        (profile, pb.MEMBERSHIP_CHANGE_KIND_EXITED, "time"),
        (profile, pb.MEMBERSHIP_CHANGE_KIND_ENTERED, "merge"),
    ]
    assert list(watched[1].changed_conditions) == ['event("Order Completed").count(within 30d) >= 2']
    resumed: list[pb.WatchMembershipsResponse] = []
    request = pb.WatchMembershipsRequest(audience_ids=["big_spenders"], resume_token=watched[0].resume_token)
    async for change in stub.WatchMemberships(request, metadata=ADMIN):
        resumed.append(change)
        if len(resumed) == 2:
            break
    assert [(c.kind, c.resume_token) for c in resumed] == [(c.kind, c.resume_token) for c in watched[1:]]

    # Every read model can be rebuilt from the log: a fresh evaluator over the same log agrees on who is in
    # which audience and on every computed value (change numbers and times may differ: batches differ).
    await cluster.app.reactor.wait_for(await identity.store.head_position(), within=60)
    live = await asyncio.to_thread(semantic_snapshot, cluster.app.engine)
    rebuilt_engine = create_read_model_engine(f"sqlite:///{cluster.tmp / 'rebuilt.db'}")
    rebuilt = Reactor(identity.store, Segmentation(identity.keyring, rebuilt_engine), rebuilt_engine)
    await rebuilt.catch_up()
    assert await asyncio.to_thread(semantic_snapshot, rebuilt_engine) == live
    rebuilt_engine.dispose()


def semantic_snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Who is in which audience, and every computed value and trait document (what a rebuild must equal)."""
    with engine.connect() as connection:
        members = connection.execute(
            select(t.memberships.c.audience_id, t.memberships.c.profile_id).where(
                t.memberships.c.member.is_(True)
            )
        )
        values = connection.execute(
            select(t.computed.c.profile_id, t.computed.c.trait_id, t.computed.c.value)
        )
        traits = connection.execute(select(t.profiles.c.profile_id, t.profiles.c.traits))
        return {
            "members": sorted(tuple(row) for row in members),
            "values": sorted((p, trait, json.dumps(v, sort_keys=True)) for p, trait, v in values),
            "traits": sorted((p, json.dumps(v, sort_keys=True)) for p, v in traits),
        }
