"""Projections over the real SQLite event log, with file (and PostgreSQL) read models (the reactor contract in
tests/integration/reactor/ covers reactors that append)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from cdp.eventlog import open_event_store
from cdp.eventlog.port import EventStore
from cdp.reactor import Reactor
from cdp.sqlengine import create_read_model_engine, read_only
from tests.unit.reactor.counting import EventTypeCounts, events, read_counts
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[3]
POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CRASHING_RUNNER = """
import asyncio, sys
from cdp.eventlog import open_event_store
from cdp.reactor import Reactor
from cdp.sqlengine import create_read_model_engine, read_only
from tests.waiting import eventually
from tests.unit.reactor.counting import EventTypeCounts

async def main():
    store = open_event_store(sys.argv[1])
    engine = create_read_model_engine(sys.argv[2])
    print("started", flush=True)
    await Reactor(store, EventTypeCounts(delay=0.02), engine, batch_size=7).catch_up()

asyncio.run(main())
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    store = open_event_store(f"sqlite:///{tmp_path / 'events.db'}")
    yield store
    await store.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_read_model_engine(f"sqlite:///{tmp_path / 'readmodel' / 'counts.db'}")
    yield engine
    engine.dispose()


async def until(condition: Any) -> None:
    """Wait for a condition the runner makes true in the background (a generous cap, not a timing check)."""
    await eventually(condition)


async def test_rebuild_equals_live_with_concurrent_appends(
    store: EventStore, engine: Engine, tmp_path: Path
) -> None:
    await rebuild_equals_live(store, engine, tmp_path)


@pytest.mark.postgres
async def test_rebuild_equals_live_on_the_postgres_log(engine: Engine, tmp_path: Path) -> None:
    schema = f"test_projection_{uuid.uuid4().hex[:10]}"
    store = open_event_store(f"{POSTGRES}?schema={schema}")
    try:
        await store.head_position()
    except Exception as error:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {error}")
    try:
        await rebuild_equals_live(store, engine, tmp_path)
    finally:
        await store.close()
        admin = create_engine(
            POSTGRES.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


async def rebuild_equals_live(store: EventStore, engine: Engine, tmp_path: Path) -> None:
    """Live projection while appends happen, then a rebuild and a fresh database: all three agree."""
    await store.append("page-0", events(300))
    live = Reactor(store, EventTypeCounts(), engine, batch_size=50)
    task = asyncio.create_task(live.run())
    for n in range(20):
        await store.append(f"page-{n + 1}", events(n + 1, ("Bought", "Refunded")))
    head = await store.head_position()
    await until(lambda: live.position == head)
    assert (await live.status()).lag == 0
    live.stop()
    await task
    before = read_counts(engine)
    assert sum(before.values()) == 300 + sum(range(1, 21))
    await live.rebuild()
    assert read_counts(engine) == before
    fresh = create_read_model_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    await Reactor(store, EventTypeCounts(), fresh, batch_size=13).catch_up()
    assert read_counts(fresh) == before
    fresh.dispose()


async def test_killed_process_resumes_to_the_same_result(store: EventStore, tmp_path: Path) -> None:
    await store.append("page-1", events(200))
    events_url = f"sqlite:///{tmp_path / 'events.db'}"
    model_url = f"sqlite:///{tmp_path / 'killed.db'}"
    child = subprocess.Popen(  # noqa: ASYNC220 - a plain child process is the point: it gets SIGKILLed
        [sys.executable, "-c", CRASHING_RUNNER, events_url, model_url], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"started"
    engine = create_read_model_engine(model_url)
    await until(lambda: _checkpoint(engine) >= 60)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    killed_at = _checkpoint(engine)
    assert killed_at < await store.head_position(), "the child finished before it was killed; slow it down"
    applied = [event for event in await store.read_all() if event.global_position <= killed_at]
    assert sum(read_counts(engine).values()) == len(
        applied
    )  # the model holds exactly what the checkpoint says
    await Reactor(store, EventTypeCounts(), engine, batch_size=7).catch_up()
    assert read_counts(engine) == {"Viewed": 67, "Clicked": 67, "Bought": 66}
    engine.dispose()


@pytest.mark.postgres
async def test_postgres_read_model(store: EventStore) -> None:
    name = f"cdp_proj_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        POSTGRES.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as error:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {error}")
    engine = create_read_model_engine(POSTGRES.rsplit("/", 1)[0] + f"/{name}")
    try:
        await store.append("page-1", events(40))
        runner = Reactor(store, EventTypeCounts(), engine, batch_size=9)
        assert await runner.catch_up() == await store.head_position()
        before = read_counts(engine)
        await runner.rebuild()
        assert read_counts(engine) == before == {"Viewed": 14, "Clicked": 13, "Bought": 13}
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def _checkpoint(engine: Engine) -> int:
    """The stored checkpoint (-2 before the child created the table)."""
    try:
        with read_only(engine).connect() as conn:
            value = conn.execute(text("SELECT position FROM projection_checkpoints")).scalar()
            return -2 if value is None else int(value)
    except Exception:
        return -2
