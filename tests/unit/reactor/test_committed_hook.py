"""The reactor's after-commit hook (`committed`): called once per committed batch, after the commit, and at load
through `Projecting`; its failures never undo or park the batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from cdp.eventlog.memory import InMemoryEventStore
from cdp.eventlog.port import EventStoreUnavailable
from cdp.reactor import Reactor, RetryPolicy, checkpoints
from tests.unit.reactor.counting import EventTypeCounts, events, read_counts

FAST_RETRY = RetryPolicy(initial=0.001, maximum=0.01)


class Hooked(EventTypeCounts):
    """Counts events, and notes the stored checkpoint each time the hook runs; `failures` are raised, in turn,
    by the hook after a commit."""

    def __init__(self, engine: Engine, failures: list[Exception] | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.failures = failures or []
        self.seen: list[int | None] = []

    async def committed(self) -> None:
        with Session(self.engine) as session:
            self.seen.append(
                session.scalar(select(checkpoints.c.position).where(checkpoints.c.name == self.name))
            )
        if self.failures and self.batches:
            raise self.failures.pop(0)


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    yield engine
    engine.dispose()


async def test_the_hook_runs_after_each_commit_and_at_load(engine: Engine) -> None:
    store = InMemoryEventStore()
    await store.append("page-1", events(25))
    projection = Hooked(engine)
    position = await Reactor(store, projection, engine, batch_size=10, retry=FAST_RETRY).catch_up()
    # At load (nothing committed yet), then once per batch, each time seeing that batch's checkpoint committed.
    assert projection.batches == [10, 10, 5]
    assert projection.seen == [-1, 9, 19, position]


async def test_a_failing_hook_is_logged_and_never_parks_the_batch(engine: Engine) -> None:
    store = InMemoryEventStore()
    await store.append("page-1", events(12))
    projection = Hooked(engine, failures=[RuntimeError("no"), RuntimeError("still no")])
    reactor = Reactor(store, projection, engine, batch_size=5, retry=FAST_RETRY)
    position = await reactor.catch_up()
    assert position == await store.head_position()
    assert sum(read_counts(engine).values()) == 12
    assert (await reactor.status()).parked == 0
    assert projection.batches == [5, 5, 2]  # each batch decided once


async def test_an_outage_in_the_hook_is_retried_through_a_reload(engine: Engine) -> None:
    store = InMemoryEventStore()
    await store.append("page-1", events(6))
    projection = Hooked(engine)
    reactor = Reactor(store, projection, engine, batch_size=10, retry=FAST_RETRY)
    await reactor.catch_up()
    await store.append("page-1", events(3))
    projection.failures = [EventStoreUnavailable("log away")]
    position = await reactor.catch_up()
    assert position == await store.head_position()
    assert sum(read_counts(engine).values()) == 9  # committed once, not decided again
    assert projection.seen[-1] == position  # the reload ran the hook again, and it succeeded
