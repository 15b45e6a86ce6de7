"""The profile stream: identity says where each message landed, and a consumer that follows it (and identity's
decisions) without the graph sees every profile's messages exactly as identity's own profiles count them."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from cdp.events import EventMetadata, MessagesAttributed, from_recorded
from cdp.events.governance import SubjectErased
from cdp.events.streams import attribution_stream, consent_stream
from cdp.reactor import Reactor
from cdp.runtime import resources
from services.identity.observer import Observer
from services.identity.readmodel import State
from services.identity.replay import MESSAGES, replay
from services.identity.resolver import Resolver
from tests.integration.identity.conftest import Harness, settings_for
from tests.integration.identity.profile_activity import ProfileActivity, counts
from tests.integration.identity.test_resolver_restart import collect_people, cut, log  # noqa: F401 - fixture
from tests.integration.reactor.receipts import Crash, CrashAfterAppend


async def attributions(h: Harness) -> list[MessagesAttributed]:
    """Every MessagesAttributed in the log, in order."""
    found = [from_recorded(r) for r in await h.store.read_stream(attribution_stream())]
    assert all(isinstance(event, MessagesAttributed) for event in found)
    return found  # type: ignore[return-value]


async def identity_counts(h: Harness) -> dict[str, int]:
    """Messages per live profile as identity counts them (its histories, replayed from the log)."""
    state = State()
    await replay(h.store, Observer(state, h.keyring, h.ids))
    found = {}
    for profile, node in state.graph.nodes.items():
        found[profile] = sum(
            sum(state.histories[s].counts.values()) for s in node.subjects if s in state.histories
        )
    return {profile: n for profile, n in found.items() if n}


async def test_a_consumer_of_the_profile_stream_counts_every_profile_as_identity_does(
    log: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    rng = random.Random(21)
    await collect_people(log, range(0, 12), rng)  # shared e-mails: merges and refusals
    await log.resolver.catch_up()
    await log.resolver.split(cut(log.ids("user_id", "u4"), log.ids("anonymous_id", "device-4")), "admin")
    erased = log.ids("user_id", "u6")
    await log.store.append(
        consent_stream(erased),
        [SubjectErased(request_id="r1", subject_id=erased).to_new_event(EventMetadata(actor="system"))],
    )
    await collect_people(log, range(12, 20), rng)
    await log.resolver.catch_up()

    engine = resources.read_model_engine(settings_for(tmp_path / "consumer"), "segments")
    try:
        await Reactor(log.store, ProfileActivity(), engine, batch_size=13).catch_up()
        consumer = counts(engine)
    finally:
        engine.dispose()
    expected = await identity_counts(log)
    assert {p: n for p, n in consumer.items() if p} == expected
    assert sum(expected.values()) > 60 and len(expected) > 5


async def test_each_message_is_attributed_once_and_the_batches_tile_the_log_through_a_crash(
    log: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    await collect_people(log, range(0, 10), random.Random(4))
    engine = resources.read_model_engine(settings_for(tmp_path / "crashed"), "identity")
    crashing = Resolver(CrashAfterAppend(log.store, crash_on=3), log.keyring, log.ids, engine, batch_size=7)
    with pytest.raises(Crash):  # killed after appending its third batch, before committing it
        await crashing.catch_up()
    restarted = Resolver(log.store, log.keyring, log.ids, engine, batch_size=11)  # other batch boundaries
    try:
        await restarted.catch_up()
    finally:
        engine.dispose()

    batches = await attributions(log)
    assert batches[0].after_position == -1
    for before, after in itertools.pairwise(batches):
        assert after.after_position == before.through_position  # consecutive ranges, no gap, no overlap
    named = [entry.position for batch in batches for entry in batch.entries()]
    assert len(named) == len(set(named)), "a message was attributed twice"
    messages = [r.global_position for r in await log.store.read_all(filter=MESSAGES)]
    assert sorted(named) == messages  # every message of this log has a usable identifier
    for batch in batches:
        assert all(batch.after_position < p <= batch.through_position for p in batch.positions)
    state = await restarted.state()
    last = batches[-1].entries()[-1]
    assert state.graph.profile_of(last.subject_id) == last.profile_id
