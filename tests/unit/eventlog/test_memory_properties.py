"""Properties of the log, checked on the in-memory store against a trivial model."""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.eventlog import AppendResult, EventFilter, ExpectedVersion, NewEvent, WrongExpectedVersion
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
