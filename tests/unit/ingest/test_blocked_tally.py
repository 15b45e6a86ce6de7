"""The blocked tally is never lost: a write that fails puts it back, a write in progress outlives a cancellation."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from services.ingest.configuration import BlockedKey, Drained, PlanEnforcer, flush_blocked
from services.ingest.domain.tracking_plans import PlanBook

HOUR = datetime(2026, 1, 1, 10, tzinfo=UTC)
KEY = BlockedKey("ios", "shop", 1, "track", "Secret Event", "unplanned_event", "", HOUR)


def tallied(count: int) -> PlanEnforcer:
    enforcer = PlanEnforcer(PlanBook())
    enforcer.restore([(KEY, count, HOUR, HOUR)])
    return enforcer


async def test_a_failed_write_puts_the_tally_back_for_the_next_flush() -> None:
    enforcer, written = tallied(3), list[Drained]()

    def broken(drained: list[Drained]) -> None:
        raise OSError("database is locked")

    assert not await flush_blocked(enforcer, broken)
    assert await flush_blocked(enforcer, written.extend)
    assert written == [(KEY, 3, HOUR, HOUR)]
    assert enforcer.drain() == []


async def test_a_cancelled_flush_finishes_the_write_it_started() -> None:
    enforcer, written, entered, release = tallied(5), list[Drained](), threading.Event(), threading.Event()

    def slow(drained: list[Drained]) -> None:
        entered.set()
        release.wait(30)
        written.extend(drained)

    task = asyncio.create_task(flush_blocked(enforcer, slow))
    await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == [(KEY, 5, HOUR, HOUR)] and enforcer.drain() == []
