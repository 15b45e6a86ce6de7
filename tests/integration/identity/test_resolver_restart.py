"""The resolver over a real SQLite log and read model: restarts, bounded caches and re-runs agree."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from cdp.events import EventMetadata
from cdp.events.governance import SubjectErased
from cdp.events.streams import consent_stream
from cdp.runtime import resources
from services.identity import observer as observer_module
from services.identity import readmodel
from services.identity import resolution as resolution_module
from services.identity.domain.decisions import Split
from services.identity.domain.graph import Graph
from services.identity.domain.splits import split_identifier
from services.identity.observer import Observer
from services.identity.prepare import OpenerProcess
from services.identity.queries import record_from_state
from services.identity.readmodel import State
from services.identity.replay import replay, replay_profile
from services.identity.resolver import Resolver
from tests.integration.identity.conftest import Harness, settings_for
from tests.integration.identity.test_identity_grpc import T0


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Harness]:
    """A log, keyring and subject ids without a server: the test drives resolvers itself."""
    settings = settings_for(tmp_path)
    store, keyring = resources.event_store(settings), resources.keyring(settings)
    engine = resources.read_model_engine(settings, "identity")
    resolver = Resolver(store, keyring, resources.subject_ids(settings), engine, batch_size=7)
    try:
        yield Harness(None, None, resolver, store, keyring, resources.subject_ids(settings))  # type: ignore[arg-type]
    finally:
        await store.close()
        keyring.close()
        engine.dispose()


async def collect_people(h: Harness, people: range, rng: random.Random) -> None:
    """Anonymous browsing, identify with a (sometimes shared) e-mail, a track, a second device aliased."""
    for n in people:
        anon, device, at = f"anon-{n}", f"device-{n}", T0 + timedelta(minutes=n)
        email = f"p{rng.randrange(40)}@x.io"
        await h.collect("page", at=at, anonymousId=anon)
        traits = {"email": email, "n": n}
        await h.collect(
            "identify", at=at + timedelta(seconds=1), anonymousId=anon, userId=f"u{n}", traits=traits
        )
        await h.collect("track", at=at + timedelta(seconds=2), userId=f"u{n}", event="Bought")
        await h.collect("screen", at=at + timedelta(seconds=3), anonymousId=device)
        await h.collect("alias", at=at + timedelta(seconds=4), previousId=device, userId=f"u{n}")


def cut(user: str, device: str) -> Callable[[State], Split]:
    """An operator's split of `device` off the profile holding `user`, as the resolver asks for it."""

    def build(state: State) -> Split:
        profile = state.graph.profile_of(user)
        assert profile is not None
        return split_identifier(
            state.graph,
            profile,
            device,
            decision_id=str(uuid.uuid4()),
            new_profile=str(uuid.uuid4()),
            reason="shared",
            prevent_relink=False,
            at=T0,
        )

    return build


async def test_restarts_re_runs_and_a_tiny_cache_give_the_same_read_model(
    log: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readmodel, "HISTORY_CACHE", 3)  # histories are re-read from the database each batch
    rng = random.Random(5)
    await collect_people(log, range(0, 15), rng)
    await log.resolver.catch_up()
    await collect_people(log, range(15, 30), rng)
    engine = resources.read_model_engine(settings_for(tmp_path), "identity")
    restarted = Resolver(log.store, log.keyring, log.ids, engine, batch_size=11)  # loads what the first saved
    await restarted.catch_up()
    live = await restarted.snapshot()
    head = await log.store.head_position()

    # Another read model, deciding every message again in other batch sizes: the same decisions, none appended.
    other = resources.read_model_engine(settings_for(tmp_path / "other"), "identity")
    try:
        fresh = Resolver(log.store, log.keyring, log.ids, other, batch_size=50)
        await fresh.catch_up()
        assert await fresh.snapshot() == live
        assert await log.store.head_position() == head
    finally:
        other.dispose()
        engine.dispose()


async def test_a_split_appended_but_not_saved_is_recovered_from_the_log(
    log: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await collect_people(log, range(0, 5), random.Random(1))
    await log.resolver.catch_up()
    user, device = log.ids("user_id", "u3"), log.ids("anonymous_id", "device-3")
    build = cut(user, device)

    def fail(state: State) -> None:
        raise OSError("the read-model database went away")

    monkeypatch.setattr(
        log.resolver.resolution, "save", fail
    )  # the fault: after the split's append, before its save
    with pytest.raises(OSError):
        await log.resolver.split(build, "admin")
    monkeypatch.undo()

    engine = resources.read_model_engine(settings_for(tmp_path), "identity")
    try:
        restarted = Resolver(log.store, log.keyring, log.ids, engine)
        state = await restarted.state()
        assert state.graph.profile_of(device) not in (None, state.graph.profile_of(user))
        recovered = await restarted.snapshot()
        assert any('"split"' in row for row in recovered["identity_decisions"])
        await restarted.rebuild()  # the log alone gives the same read model
        assert await restarted.snapshot() == recovered
        again = Resolver(log.store, log.keyring, log.ids, engine)  # and recovering twice changes nothing
        await again.state()
        assert await again.snapshot() == recovered
    finally:
        engine.dispose()


async def test_opening_pages_in_a_worker_process_decides_the_same(
    log: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await collect_people(log, range(0, 30), random.Random(7))
    snapshots, heads = [], []
    opened = 0
    original = observer_module.Observer.opened

    def counting(self: observer_module.Observer, *args: Any) -> Any:
        nonlocal opened
        opened += 1
        return original(self, *args)

    monkeypatch.setattr(observer_module.Observer, "opened", counting)
    for name, pipelined in (("here", 10**9), ("worker", 1)):
        monkeypatch.setattr(resolution_module, "PIPELINE_BATCH", pipelined)
        engine = resources.read_model_engine(settings_for(tmp_path / name), "identity")
        try:
            resolver = Resolver(log.store, log.keyring, log.ids, engine, batch_size=20)
            await resolver.catch_up()
            snapshots.append(await resolver.snapshot())
            heads.append(await log.store.head_position())
        finally:
            engine.dispose()
    assert opened > 0  # the worker opened pages, and the resolver used them
    assert snapshots[0] == snapshots[1]
    assert heads[0] == heads[1]  # the same decisions: the second resolver's appends were all replays

    def broken(self: OpenerProcess, task: Any) -> Future[Any]:
        failed: Future[Any] = Future()
        failed.set_exception(BrokenProcessPool("the worker died"))
        return failed

    monkeypatch.setattr(OpenerProcess, "open_page", broken)  # a worker that fails: pages are opened here
    opened = 0
    engine = resources.read_model_engine(settings_for(tmp_path / "broken"), "identity")
    try:
        resolver = Resolver(log.store, log.keyring, log.ids, engine, batch_size=20)
        await resolver.catch_up()
        assert await resolver.snapshot() == snapshots[0]
    finally:
        engine.dispose()
    assert opened == 0 and await log.store.head_position() == heads[0]


async def test_a_read_model_of_another_layout_is_rebuilt_from_the_log(log: Harness, tmp_path: Path) -> None:
    await collect_people(log, range(0, 6), random.Random(3))
    await log.resolver.catch_up()
    live = await log.resolver.snapshot()
    engine = resources.read_model_engine(settings_for(tmp_path), "identity")
    try:
        with engine.begin() as connection:  # what older code left: another layout, no fingerprint
            connection.execute(text("DROP TABLE identity_schema"))
            connection.execute(text("DROP TABLE identity_decisions"))
            connection.execute(
                text("CREATE TABLE identity_decisions (seq INTEGER PRIMARY KEY, gone TEXT NOT NULL)")
            )
        restarted = Resolver(log.store, log.keyring, log.ids, engine)
        await restarted.catch_up()
        assert await restarted.snapshot() == live
        head = await log.store.head_position()
        again = Resolver(log.store, log.keyring, log.ids, engine)  # this layout now: loaded, not rebuilt
        await again.catch_up()
        assert await again.snapshot() == live and await log.store.head_position() == head
    finally:
        engine.dispose()


async def test_get_profile_as_of_opens_only_what_concerns_the_profile_and_agrees_with_a_full_replay(
    log: Harness,
) -> None:
    rng = random.Random(11)
    await collect_people(log, range(0, 12), rng)
    await log.resolver.catch_up()
    middle = datetime.now(UTC)
    await collect_people(log, range(12, 20), rng)
    # A blocked anonymous id files the message under a subject no decision ever names.
    await log.collect("identify", at=T0, anonymousId="anonymous", traits={"email": "p1@x.io", "late": True})
    await log.resolver.catch_up()
    state = await log.resolver.state()
    await log.resolver.split(cut(log.ids("user_id", "u3"), log.ids("anonymous_id", "device-3")), "admin")
    await log.store.append(
        consent_stream(log.ids("user_id", "u5")),
        [
            SubjectErased(request_id="r1", subject_id=log.ids("user_id", "u5")).to_new_event(
                EventMetadata(actor="system")
            )
        ],
    )
    await log.resolver.catch_up()
    assert state.graph.profile_of(log.ids("user_id", "u5")) is None

    for until in (middle, datetime.now(UTC)):
        full = State()
        await replay(log.store, Observer(full, log.keyring, log.ids), until=until)
        assert full.graph.nodes
        for profile in full.graph.nodes:
            scoped = State()

            def locate(graph: Graph, wanted: str = profile) -> str | None:
                return graph.resolve(wanted)

            found, _ = await replay_profile(
                log.store, Observer(scoped, log.keyring, log.ids), locate, until=until
            )
            assert found == profile
            mine = record_from_state(scoped, profile, lambda s: s)
            assert mine is not None and mine == record_from_state(full, profile, lambda s: s)
            assert len(scoped.histories) < len(full.histories)  # it opened fewer messages
