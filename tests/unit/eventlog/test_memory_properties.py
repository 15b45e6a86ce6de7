"""Properties of the log, checked on the in-memory store against a trivial model."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.eventlog import (
    AppendResult,
    EventFilter,
    EventStoreError,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    WrongExpectedVersion,
)
from cdp.eventlog.memory import InMemoryEventStore

STREAMS = ["a-1", "a-2", "b-1"]

appends = st.lists(
    st.tuples(
        st.sampled_from(STREAMS),
        st.integers(min_value=1, max_value=4),
        st.sampled_from(["any", "no_stream", "exists", "exact", "wrong"]),
        st.booleans(),  # retry the previous batch of that stream instead
    ),
    max_size=25,
)


def _expected(kind: str, current: int | None) -> ExpectedVersion | int:
    """An expectation of the given kind for a stream currently at `current`."""
    return {
        "any": ExpectedVersion.ANY,
        "no_stream": ExpectedVersion.NO_STREAM,
        "exists": ExpectedVersion.STREAM_EXISTS,
        "exact": current if current is not None else ExpectedVersion.NO_STREAM,
        "wrong": (current or 0) + 7,
    }[kind]


@settings(max_examples=60, deadline=None)
@given(appends)
def test_the_log_matches_a_model_of_appends(steps: list[tuple[str, int, str, bool]]) -> None:
    asyncio.run(_check(steps))


async def _check(steps: list[tuple[str, int, str, bool]]) -> None:
    """Replay the steps on the store and on lists; compare every read."""
    store = InMemoryEventStore()
    model: dict[str, list[NewEvent]] = {s: [] for s in STREAMS}
    last_batch: dict[str, tuple[list[NewEvent], AppendResult]] = {}
    order: list[NewEvent] = []
    for stream, size, kind, retry in steps:
        current = len(model[stream]) - 1 if model[stream] else None
        if retry and stream in last_batch:
            batch, original = last_batch[stream]
            assert await store.append(stream, batch, _expected(kind, current)) == original
            continue
        batch = [NewEvent("T", f"{stream}{len(order)}{i}".encode()) for i in range(size)]
        try:
            result = await store.append(stream, batch, _expected(kind, current))
        except WrongExpectedVersion as error:
            assert error.actual == current
            continue
        model[stream].extend(batch)
        order.extend(batch)
        last_batch[stream] = (batch, result)
        assert result.stream_position == len(model[stream]) - 1
    everything = await store.read_all()
    assert [e.id for e in everything] == [e.id for e in order]
    assert all(a.global_position < b.global_position for a, b in itertools.pairwise(everything))
    for stream in STREAMS:
        stored = await store.read_stream(stream)
        assert [e.id for e in stored] == [e.id for e in model[stream]]
        assert [e.stream_position for e in stored] == list(range(len(model[stream])))
    category_a = await store.read_all(filter=EventFilter(categories=("a",)))
    assert [e.id for e in category_a] == [e.id for e in order if e in model["a-1"] + model["a-2"]]


@settings(max_examples=60, deadline=None)
@given(appends, st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=25))
def test_append_many_behaves_as_sequential_appends(
    steps: list[tuple[str, int, str, bool]], call_sizes: list[int]
) -> None:
    asyncio.run(_check_many(steps, call_sizes))


def _accepts(kind: str, current: int | None) -> bool:
    """Whether an expectation of this kind holds for a stream at `current` (the model's own rule)."""
    return kind in ("any", "exact") or (kind == "no_stream") == (current is None)


async def _check_many(steps: list[tuple[str, int, str, bool]], call_sizes: list[int]) -> None:
    """Group the steps into append_many calls; every part must come out as if appended on its own."""
    store = InMemoryEventStore()
    model: dict[str, list[NewEvent]] = {s: [] for s in STREAMS}
    last_batch: dict[str, tuple[list[NewEvent], int]] = {}
    parts: list[StreamAppend] = []
    wanted: list[
        tuple[str, int | None]
    ] = []  # ("ok", stream position) | ("wrong", actual) | ("replay", part)
    for stream, size, kind, retry in steps:
        current = len(model[stream]) - 1 if model[stream] else None
        if retry and stream in last_batch:
            batch, origin = last_batch[stream]
            parts.append(StreamAppend(stream, batch, _expected(kind, current)))
            wanted.append(("replay", origin))
            continue
        batch = [NewEvent("T", f"{stream}{len(parts)}{i}".encode()) for i in range(size)]
        parts.append(StreamAppend(stream, batch, _expected(kind, current)))
        if kind == "wrong" or not _accepts(kind, current):
            wanted.append(("wrong", current))
            continue
        model[stream].extend(batch)
        last_batch[stream] = (batch, len(parts) - 1)
        wanted.append(("ok", len(model[stream]) - 1))
    results: list[AppendResult | EventStoreError] = []
    for size in itertools.cycle(call_sizes):
        if len(results) == len(parts):
            break
        results.extend(await store.append_many(parts[len(results) : len(results) + size]))
    for result, (what, value) in zip(results, wanted, strict=True):
        if what == "ok":
            assert isinstance(result, AppendResult) and result.stream_position == value
        elif what == "wrong":
            assert isinstance(result, WrongExpectedVersion) and result.actual == value
        else:
            assert value is not None and result == results[value]
    fresh = [
        r.global_position
        for r, (what, _) in zip(results, wanted, strict=True)
        if what == "ok" and isinstance(r, AppendResult)
    ]
    assert all(a < b for a, b in itertools.pairwise(fresh))
    everything = await store.read_all()
    written = [
        e.id for part, (what, _) in zip(parts, wanted, strict=True) if what == "ok" for e in part.events
    ]
    assert [e.id for e in everything] == written
    for stream in STREAMS:
        assert [e.id for e in await store.read_stream(stream)] == [e.id for e in model[stream]]
