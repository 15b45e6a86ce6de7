"""Group commit: many concurrent single-event callers through `GroupCommitter` → `append_many`.

Three figures for one backend, each for `callers` tasks appending `rounds` events, one at a time, each to
its own stream (an ingest request for one subject):
- direct: every caller awaits `store.append` itself (one transaction per event);
- group: every caller awaits `GroupCommitter.append` (queued callers share one `append_many` transaction);
- append_many: one task calls `append_many` with `callers` one-event parts, `rounds` times (the store's own
  share of the group figure, without the committer's queue and the callers' task switches);
- raw: the bare driver inserts the same rows, `callers` per transaction (the ceiling group commit nears
  when every caller is waiting in each commit), with no checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.eventlog.raw import Rows
from cdp.eventlog import AppendResult, EventStore, NewEvent, StreamAppend
from cdp.eventlog.common import encode_metadata
from cdp.eventlog.group_commit import GroupCommitter

PAYLOAD = b'{"event":"Order Completed","properties":{"revenue":42.5,"currency":"EUR"},"anonymousId":"a1"}' * 2


@dataclass
class GroupRate:
    """events/s of direct appends, group commit and the raw driver, and the mean events per group commit."""

    callers: int
    events: int
    direct: float
    group: float
    many: float
    raw: float
    per_commit: float


def _event() -> NewEvent:
    """One event like an ingested Segment track call."""
    return NewEvent("MessageCollected", PAYLOAD, {"source": "bench"})


async def _callers(callers: int, rounds: int, append: Callable[[str], Awaitable[None]], tag: str) -> float:
    """events/s when `callers` tasks each append `rounds` single events to their own stream."""

    async def caller(number: int) -> None:
        for _ in range(rounds):
            await append(f"gc{tag}-{number}")

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    return callers * rounds / (time.perf_counter() - started)


async def time_direct(store: EventStore, callers: int, rounds: int, tag: str) -> float:
    """events/s with every caller awaiting `store.append` on its own."""

    async def append(stream: str) -> None:
        await store.append(stream, [_event()])

    return await _callers(callers, rounds, append, tag)


async def time_group(store: EventStore, callers: int, rounds: int, tag: str) -> tuple[float, float]:
    """(events/s, mean events per commit) with every caller going through one GroupCommitter."""
    committer = GroupCommitter(store)
    runner = asyncio.create_task(committer.run())

    async def append(stream: str) -> None:
        (outcome,) = await committer.append([StreamAppend(stream, [_event()])])
        if not isinstance(outcome, AppendResult):
            raise outcome

    try:
        rate = await _callers(callers, rounds, append, tag)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    return rate, committer.events / max(1, committer.commits)


async def time_many(store: EventStore, callers: int, rounds: int, tag: str) -> float:
    """events/s calling `append_many` directly with `callers` one-event parts per call."""
    calls = [[StreamAppend(f"gc{tag}-{n}", [_event()]) for n in range(callers)] for _ in range(rounds)]
    started = time.perf_counter()
    for parts in calls:
        await store.append_many(parts)
    return callers * rounds / (time.perf_counter() - started)


def time_raw(
    insert_many: Callable[[Rows, dict[str, int]], None], callers: int, rounds: int, tag: str
) -> float:
    """events/s inserting the same rows with the bare driver, one transaction of `callers` rows per round."""
    batches = []
    for round_ in range(rounds):
        events = [_event() for _ in range(callers)]
        rows: Rows = [
            (e.id, f"gc{tag}-{n}", "gc" + tag, round_, e.type, e.data, encode_metadata(e.metadata))
            for n, e in enumerate(events)
        ]
        batches.append((rows, {f"gc{tag}-{n}": round_ for n in range(callers)}))
    started = time.perf_counter()
    for rows, versions in batches:
        insert_many(rows, versions)
    return callers * rounds / (time.perf_counter() - started)


async def measure_group(
    store: EventStore,
    insert_many: Callable[[Rows, dict[str, int]], None],
    callers: int,
    rounds: int,
    repeat: int,
) -> GroupRate:
    """Best of `repeat` interleaved rounds of each figure."""
    best = GroupRate(callers, callers * rounds, 0.0, 0.0, 0.0, 0.0, 0.0)
    for round_ in range(repeat):
        best.raw = max(best.raw, time_raw(insert_many, callers, rounds, f"raw{round_}"))
        best.direct = max(best.direct, await time_direct(store, callers, rounds, f"direct{round_}"))
        best.many = max(best.many, await time_many(store, callers, rounds, f"many{round_}"))
        group, per_commit = await time_group(store, callers, rounds, f"group{round_}")
        if group > best.group:
            best.group, best.per_commit = group, per_commit
    return best


def print_group(rate: GroupRate) -> None:
    """The group-commit figures as a small table."""
    print(
        f"  {rate.callers} concurrent callers x 1 event to own stream ({rate.events} events, best of rounds):"
    )
    print(f"    direct append:  {rate.direct:>9.0f} events/s")
    print(
        f"    group commit:   {rate.group:>9.0f} events/s  ({rate.per_commit:.1f} events/commit,"
        f" {rate.group / rate.direct:.1f}x direct)"
    )
    print(f"    append_many:    {rate.many:>9.0f} events/s  ({rate.callers} parts/call, one caller)")
    print(
        f"    raw, {rate.callers}/txn:   {rate.raw:>9.0f} events/s  (group/raw {rate.group / rate.raw:.2f})"
    )
