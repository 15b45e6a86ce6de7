"""The one contract every event store adapter passes; subclass it once per adapter.

Tests never assume an empty log: each uses its own stream category and reads the global log after the head
it found, so one database (or a shared KurrentDB server) can serve a whole test class.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest

from cdp.eventlog import (
    START,
    AppendResult,
    EventFilter,
    EventIdConflict,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    NewEvent,
    PhysicalEditUnsupported,
    RecordedEvent,
    StreamAppend,
    StreamMetadata,
    WrongExpectedVersion,
)


def new_events(count: int, event_type: str = "Happened", prefix: str = "e") -> list[NewEvent]:
    """`count` distinct events whose data says which one they are."""
    return [NewEvent(event_type, f"{prefix}{i}".encode(), {"n": str(i)}) for i in range(count)]


async def take(
    events: AsyncIterator[RecordedEvent], count: int, seconds: float = 10.0
) -> list[RecordedEvent]:
    """The next `count` events of a subscription, failing after `seconds`."""
    taken: list[RecordedEvent] = []
    async with asyncio.timeout(seconds):
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[RecordedEvent]) -> AsyncIterator[AsyncIterator[RecordedEvent]]:
    """Close a subscription afterwards (the port types it as an iterator; adapters return generators)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def subscription(
    store: EventStore, after: int, *, filter: EventFilter
) -> contextlib.AbstractAsyncContextManager[AsyncIterator[RecordedEvent]]:
    """`store.subscribe(...)`, closed when the block ends."""
    return closing(store.subscribe(after, filter=filter))


async def nothing_more(events: AsyncIterator[RecordedEvent], wait: float = 0.3) -> bool:
    """Whether the subscription stays silent for `wait` seconds."""
    try:
        async with asyncio.timeout(wait):
            await anext(events)
    except TimeoutError:
        return True
    return False


class EventStoreContract(abc.ABC):
    """Behaviour every EventStore adapter must show."""

    durable = True
    """Whether a closed store can be reopened on the same data (False for the in-memory store)."""

    retention_hides_from_read_all = True
    """Whether max_count / max_age also hide events from read_all and subscriptions, not only read_stream."""

    refuses_partial_overlap = True
    """Whether an append whose ids are partly stored already (or stored in another stream) is refused."""

    edits_single_events = True
    """Whether `erase_events` deletes and rewrites single events (False: it raises PhysicalEditUnsupported)."""

    reclaims = True
    """What `reclaim` answers on an idle log (KurrentDB: False, scavenging is the operator's)."""

    @abc.abstractmethod
    async def open_store(self) -> EventStore:
        """A new store instance over this test's database (every call reaches the same data)."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        """The store under test, closed afterwards."""
        opened = await self.open_store()
        yield opened
        await opened.close()

    @pytest.fixture
    def cat(self) -> str:
        """A stream category no other test uses."""
        return "t" + uuid.uuid4().hex[:12]

    # -- appending and optimistic concurrency ---------------------------------------------------------

    async def test_append_assigns_stream_and_global_positions(self, store: EventStore, cat: str) -> None:
        first = await store.append(f"{cat}-a", new_events(3), ExpectedVersion.NO_STREAM)
        second = await store.append(f"{cat}-a", new_events(2, prefix="f"), 2)
        assert first.stream_position == 2
        assert second.stream_position == 4
        assert second.global_position > first.global_position
        stored = await store.read_stream(f"{cat}-a")
        assert [e.stream_position for e in stored] == [0, 1, 2, 3, 4]
        assert [e.data for e in stored] == [b"e0", b"e1", b"e2", b"f0", b"f1"]
        assert stored[2].global_position == first.global_position
        assert stored[4].global_position == second.global_position
        assert stored[0].metadata == {"n": "0"} and stored[0].type == "Happened" and stored[0].category == cat

    async def test_no_stream_rejects_an_existing_stream(self, store: EventStore, cat: str) -> None:
        await store.append(f"{cat}-a", new_events(2), ExpectedVersion.NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append(f"{cat}-a", new_events(1), ExpectedVersion.NO_STREAM)
        assert caught.value.expected is ExpectedVersion.NO_STREAM
        assert caught.value.actual == 1
        assert caught.value.stream == f"{cat}-a"

    async def test_stream_exists_rejects_a_missing_stream(self, store: EventStore, cat: str) -> None:
        with pytest.raises(WrongExpectedVersion) as caught:
            await store.append(f"{cat}-a", new_events(1), ExpectedVersion.STREAM_EXISTS)
        assert caught.value.expected is ExpectedVersion.STREAM_EXISTS
        assert caught.value.actual is None
        await store.append(f"{cat}-a", new_events(1))
        result = await store.append(f"{cat}-a", new_events(1, prefix="g"), ExpectedVersion.STREAM_EXISTS)
        assert result.stream_position == 1

    async def test_exact_version_must_match_the_last_stream_position(
        self, store: EventStore, cat: str
    ) -> None:
        await store.append(f"{cat}-a", new_events(2))
        for wrong in (0, 2, 5):
            with pytest.raises(WrongExpectedVersion) as caught:
                await store.append(f"{cat}-a", new_events(1), wrong)
            assert (caught.value.expected, caught.value.actual) == (wrong, 1)
        with pytest.raises(WrongExpectedVersion) as missing:
            await store.append(f"{cat}-b", new_events(1), 0)
        assert (missing.value.expected, missing.value.actual) == (0, None)
        assert (await store.append(f"{cat}-a", new_events(1, prefix="x"), 1)).stream_position == 2
        assert len(await store.read_stream(f"{cat}-a")) == 3
        assert await store.read_stream(f"{cat}-b") == []

    async def test_any_appends_whatever_the_stream_state(self, store: EventStore, cat: str) -> None:
        assert (await store.append(f"{cat}-a", new_events(1))).stream_position == 0
        assert (
            await store.append(f"{cat}-a", new_events(1, prefix="x"), ExpectedVersion.ANY)
        ).stream_position == 1

    async def test_a_rejected_append_writes_nothing(self, store: EventStore, cat: str) -> None:
        await store.append(f"{cat}-a", new_events(1))
        head = await store.head_position()
        with pytest.raises(WrongExpectedVersion):
            await store.append(f"{cat}-a", new_events(5, prefix="x"), 7)
        assert len(await store.read_stream(f"{cat}-a")) == 1
        assert await store.read_all(head, filter=EventFilter(categories=(cat,))) == []

    # -- idempotency ------------------------------------------------------------------------------------

    async def test_a_retried_append_returns_the_original_result_once(
        self, store: EventStore, cat: str
    ) -> None:
        batch = new_events(3)
        original = await store.append(f"{cat}-a", batch, ExpectedVersion.NO_STREAM)
        retried = await store.append(f"{cat}-a", batch, ExpectedVersion.NO_STREAM)
        assert retried == original
        assert (original.replayed, retried.replayed) == (False, True), "a retry says it wrote nothing"
        assert len(await store.read_stream(f"{cat}-a")) == 3

    async def test_a_retry_after_other_appends_still_returns_the_original(
        self, store: EventStore, cat: str
    ) -> None:
        first, second = new_events(2), new_events(2, prefix="s")
        original = await store.append(f"{cat}-a", first, ExpectedVersion.NO_STREAM)
        await store.append(f"{cat}-a", second, 1)
        await store.append(f"{cat}-b", new_events(1))
        assert await store.append(f"{cat}-a", first, ExpectedVersion.NO_STREAM) == original
        assert await store.append(f"{cat}-a", first, 1) == original
        stored = await store.read_stream(f"{cat}-a")
        assert [e.id for e in stored] == [e.id for e in first + second]

    async def test_a_partial_overlap_is_refused(self, store: EventStore, cat: str) -> None:
        if not self.refuses_partial_overlap:
            pytest.skip("this backend does not look up event ids outside the stream's latest events")
        batch = new_events(2)
        await store.append(f"{cat}-a", batch)
        with pytest.raises(EventStoreError):
            await store.append(f"{cat}-a", [batch[1], *new_events(1, prefix="n")])
        with pytest.raises(EventStoreError):
            await store.append(f"{cat}-b", batch)
        assert len(await store.read_stream(f"{cat}-a")) == 2
        assert await store.read_stream(f"{cat}-b") == []

    # -- reading ----------------------------------------------------------------------------------------

    async def test_read_stream_forwards_backwards_from_and_limit(self, store: EventStore, cat: str) -> None:
        await store.append(f"{cat}-a", new_events(5))
        positions = [e.stream_position for e in await store.read_stream(f"{cat}-a")]
        assert positions == [0, 1, 2, 3, 4]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", 2)] == [2, 3, 4]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", 1, limit=2)] == [1, 2]
        backwards = await store.read_stream(f"{cat}-a", 3, backwards=True)
        assert [e.stream_position for e in backwards] == [3, 2, 1, 0]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", backwards=True, limit=1)] == [
            4
        ]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", limit=1)] == [0]
        latest = await store.read_stream(f"{cat}-a", 2**62, backwards=True, limit=2)
        assert [e.stream_position for e in latest] == [4, 3]
        assert await store.read_stream(f"{cat}-a", 5) == []
        assert await store.read_stream(f"{cat}-missing") == []

    async def test_read_all_in_global_order_with_after_and_limit(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-a", new_events(2, prefix="a"))
        await store.append(f"{cat}-b", new_events(2, prefix="b"))
        await store.append(f"{cat}-a", new_events(1, prefix="c"))
        mine = EventFilter(categories=(cat,))
        every = await store.read_all(head, filter=mine)
        assert [e.data for e in every] == [b"a0", b"a1", b"b0", b"b1", b"c0"]
        globals_ = [e.global_position for e in every]
        assert globals_ == sorted(globals_) and len(set(globals_)) == 5 and globals_[0] > head
        assert [e.data for e in await store.read_all(globals_[1], filter=mine)] == [b"b0", b"b1", b"c0"]
        assert [e.data for e in await store.read_all(globals_[1], limit=2, filter=mine)] == [b"b0", b"b1"]
        unfiltered = await store.read_all(head)
        assert [e.global_position for e in unfiltered if e.category == cat] == globals_
        assert await store.head_position() == globals_[-1]

    async def test_read_all_filters_by_category_and_event_type(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        other = cat + "x"
        await store.append(f"{cat}-1", [NewEvent("Joined", b"1"), NewEvent("Left", b"2")])
        await store.append(f"{other}-1", [NewEvent("Joined", b"3")])
        await store.append(f"{cat}-2", [NewEvent("Joined", b"4")])
        by_category = await store.read_all(head, filter=EventFilter(categories=(cat,)))
        assert [e.data for e in by_category] == [b"1", b"2", b"4"]
        both = await store.read_all(head, filter=EventFilter(categories=(cat, other)))
        assert [e.data for e in both] == [b"1", b"2", b"3", b"4"]
        joined = await store.read_all(
            head, filter=EventFilter(categories=(cat, other), event_types=("Joined",))
        )
        assert [e.data for e in joined] == [b"1", b"3", b"4"]
        by_type = [e for e in await store.read_all(head, filter=EventFilter(event_types=("Left",)))]
        assert [e.data for e in by_type if e.category == cat] == [b"2"]
        assert all(e.type == "Left" for e in by_type)

    async def test_head_position_tracks_the_newest_event(self, store: EventStore, cat: str) -> None:
        before = await store.head_position()
        result = await store.append(f"{cat}-a", new_events(3))
        assert before < result.global_position == await store.head_position()

    async def test_a_fresh_log_is_empty(self) -> None:
        if not self.log_is_fresh_per_test:
            pytest.skip("this adapter's test database is shared by the test class")
        opened = await self.open_store()
        try:
            assert await opened.head_position() == START
            assert await opened.read_all() == []
            assert await opened.get_stream_metadata("none-1") == StreamMetadata()
        finally:
            await opened.close()

    log_is_fresh_per_test = True
    """Whether open_store() starts each test on an empty log."""

    async def test_a_batch_of_2500_events_is_one_atomic_append(self, store: EventStore, cat: str) -> None:
        batch = [NewEvent("Tracked", b"x" * 200, {"i": str(i)}) for i in range(2500)]
        result = await store.append(f"{cat}-big", batch, ExpectedVersion.NO_STREAM)
        assert result.stream_position == 2499
        stored = await store.read_stream(f"{cat}-big")
        assert [e.id for e in stored] == [e.id for e in batch]
        globals_ = [e.global_position for e in stored]
        assert globals_ == sorted(globals_) and len(set(globals_)) == 2500
        assert await store.append(f"{cat}-big", batch) == result

    # -- append_many ------------------------------------------------------------------------------------

    async def test_append_many_returns_one_result_per_part_in_order(
        self, store: EventStore, cat: str
    ) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-b", new_events(2, prefix="old"))
        parts = [
            StreamAppend(f"{cat}-a", new_events(2, prefix="a"), ExpectedVersion.NO_STREAM),
            StreamAppend(f"{cat}-b", new_events(1, prefix="b"), 1),
            StreamAppend(f"{cat}-c", new_events(3, prefix="c")),
        ]
        results = await store.append_many(parts)
        assert all(isinstance(r, AppendResult) for r in results)
        for part, result in zip(parts, results, strict=True):
            stored = await store.read_stream(part.stream)
            assert isinstance(result, AppendResult)
            assert (result.stream_position, result.global_position) == (
                stored[-1].stream_position,
                stored[-1].global_position,
            )
            assert [e.id for e in stored[-len(part.events) :]] == [e.id for e in part.events]
        assert [r.stream_position for r in results if isinstance(r, AppendResult)] == [1, 2, 2]
        mine = await store.read_all(head, filter=EventFilter(categories=(cat,)))
        assert [e.data for e in mine] == [b"old0", b"old1", b"a0", b"a1", b"b0", b"c0", b"c1", b"c2"]
        assert await store.append_many([]) == []

    async def test_the_events_of_a_call_take_global_positions_in_part_order(
        self, store: EventStore, cat: str
    ) -> None:
        head = await store.head_position()
        parts = [
            StreamAppend(f"{cat}-b", new_events(2, prefix="b")),
            StreamAppend(f"{cat}-a", new_events(1, prefix="a")),
            StreamAppend(f"{cat}-b", new_events(1, prefix="bb")),
            StreamAppend(f"{cat}-c", new_events(2, prefix="c")),
        ]
        results = await store.append_many(parts)
        mine = await store.read_all(head, filter=EventFilter(categories=(cat,)))
        assert [e.id for e in mine] == [e.id for part in parts for e in part.events]
        globals_ = [e.global_position for e in mine]
        assert all(a < b for a, b in itertools.pairwise(globals_)) and globals_[0] > head
        assert [r.global_position for r in results if isinstance(r, AppendResult)] == [
            globals_[1],
            globals_[2],
            globals_[3],
            globals_[5],
        ]

    async def test_a_failing_part_fails_alone(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        stored = new_events(2, prefix="s")
        await store.append(f"{cat}-taken", stored)
        parts = [
            StreamAppend(f"{cat}-a", new_events(1, prefix="a")),
            StreamAppend(f"{cat}-taken", new_events(1, prefix="w"), 7),
            StreamAppend(f"{cat}-new", new_events(1, prefix="n"), ExpectedVersion.STREAM_EXISTS),
            StreamAppend(f"{cat}-b", new_events(1, prefix="b"), ExpectedVersion.NO_STREAM),
        ]
        if self.refuses_partial_overlap:
            parts.append(StreamAppend(f"{cat}-taken", [stored[1], *new_events(1, prefix="o")]))
            parts.append(StreamAppend(f"{cat}-other", stored))
        parts.append(StreamAppend(f"{cat}-c", new_events(1, prefix="c"), ExpectedVersion.ANY))
        results = await store.append_many(parts)
        wrong, missing = results[1], results[2]
        assert isinstance(wrong, WrongExpectedVersion) and (wrong.expected, wrong.actual) == (7, 1)
        assert isinstance(missing, WrongExpectedVersion) and missing.actual is None
        if self.refuses_partial_overlap:
            assert isinstance(results[4], EventIdConflict) and isinstance(results[5], EventIdConflict)
        landed = [r for i, r in enumerate(results) if i not in (1, 2, 4, 5)]
        assert all(isinstance(r, AppendResult) for r in landed)
        mine = await store.read_all(head, filter=EventFilter(categories=(cat,)))
        assert [e.data for e in mine] == [b"s0", b"s1", b"a0", b"b0", b"c0"]
        assert len(await store.read_stream(f"{cat}-taken")) == 2
        assert await store.read_stream(f"{cat}-other") == []

    async def test_two_parts_for_one_stream_are_two_sequential_appends(
        self, store: EventStore, cat: str
    ) -> None:
        first, second = new_events(2, prefix="f"), new_events(2, prefix="s")
        parts = [
            StreamAppend(f"{cat}-a", first, ExpectedVersion.NO_STREAM),
            StreamAppend(f"{cat}-a", second, 1),  # sees the first part
            StreamAppend(f"{cat}-a", new_events(1, prefix="x"), ExpectedVersion.NO_STREAM),  # not any more
            StreamAppend(f"{cat}-a", first),  # a retry of the first part within the call
        ]
        if self.refuses_partial_overlap:
            parts.append(StreamAppend(f"{cat}-a", [second[1], *new_events(1, prefix="o")]))
        results = await store.append_many(parts)
        one, two, refused, replayed = results[:4]
        assert isinstance(one, AppendResult) and isinstance(two, AppendResult)
        assert (one.stream_position, two.stream_position) == (1, 3)
        assert two.global_position > one.global_position
        assert isinstance(refused, WrongExpectedVersion) and refused.actual == 3
        assert replayed == one
        if self.refuses_partial_overlap:
            assert isinstance(results[4], EventIdConflict)
        stored = await store.read_stream(f"{cat}-a")
        assert [e.id for e in stored] == [e.id for e in first + second]
        assert [e.stream_position for e in stored] == [0, 1, 2, 3]

    async def test_a_part_repeating_an_earlier_part_of_the_call_is_a_replay(
        self, store: EventStore, cat: str
    ) -> None:
        events = new_events(1, prefix="e")
        first, echo = await store.append_many(
            [StreamAppend(f"{cat}-a", events), StreamAppend(f"{cat}-a", events)]
        )
        assert isinstance(first, AppendResult) and isinstance(echo, AppendResult)
        assert echo == first
        assert (first.replayed, echo.replayed) == (False, True)
        assert len(await store.read_stream(f"{cat}-a")) == 1

    async def test_a_retried_call_returns_the_original_results_and_writes_nothing(
        self, store: EventStore, cat: str
    ) -> None:
        parts = [
            StreamAppend(f"{cat}-a", new_events(2, prefix="a"), ExpectedVersion.NO_STREAM),
            StreamAppend(f"{cat}-b", new_events(3, prefix="b"), ExpectedVersion.NO_STREAM),
            StreamAppend(f"{cat}-a", new_events(1, prefix="c"), 1),
        ]
        original = await store.append_many(parts)
        assert all(isinstance(r, AppendResult) for r in original)
        await store.append(f"{cat}-a", new_events(1, prefix="later"))
        head = await store.head_position()
        retried = await store.append_many(parts)
        assert retried == original
        assert [r.replayed for r in retried if isinstance(r, AppendResult)] == [True, True, True]
        assert not any(r.replayed for r in original if isinstance(r, AppendResult))
        assert await store.head_position() == head
        assert await store.read_all(head, filter=EventFilter(categories=(cat,))) == []
        assert [e.data for e in await store.read_stream(f"{cat}-a")] == [b"a0", b"a1", b"c0", b"later0"]

    async def test_append_many_of_2500_events_over_500_streams(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        parts = [
            StreamAppend(
                f"{cat}-{i}",
                [NewEvent("Tracked", b"x" * 200, {"i": str(j)}) for j in range(5)],
                ExpectedVersion.NO_STREAM,
            )
            for i in range(500)
        ]
        results = await store.append_many(parts)
        assert [r.stream_position for r in results if isinstance(r, AppendResult)] == [4] * 500
        mine = await store.read_all(head, filter=EventFilter(categories=(cat,)))
        assert [e.id for e in mine] == [e.id for part in parts for e in part.events]
        assert [r.global_position for r in results if isinstance(r, AppendResult)] == [
            e.global_position for e in mine[4::5]
        ]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-321")] == [0, 1, 2, 3, 4]
        assert await store.append_many(parts) == results

    # -- subscriptions ----------------------------------------------------------------------------------

    async def test_subscribe_catches_up_then_follows_live_appends(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-a", new_events(3, prefix="old"))
        mine = EventFilter(categories=(cat,))
        async with subscription(store, head, filter=mine) as events:
            caught_up = await take(events, 3)
            assert [e.data for e in caught_up] == [b"old0", b"old1", b"old2"]
            await store.append(f"{cat}-other", [NewEvent("Noise", b"n")])
            await store.append(f"{cat}x-1", [NewEvent("Elsewhere", b"z")])
            await store.append(f"{cat}-a", new_events(2, prefix="new"))
            live = await take(events, 3)
            assert [e.data for e in live] == [b"n", b"new0", b"new1"]
            assert await nothing_more(events)
        positions = [e.global_position for e in caught_up + live]
        assert positions == sorted(positions)

    async def test_subscribe_filters_by_event_type_and_resumes_after_a_checkpoint(
        self, store: EventStore, cat: str
    ) -> None:
        head = await store.head_position()
        await store.append(
            f"{cat}-a", [NewEvent("Kept", b"1"), NewEvent("Dropped", b"2"), NewEvent("Kept", b"3")]
        )
        only_kept = EventFilter(categories=(cat,), event_types=("Kept",))
        async with subscription(store, head, filter=only_kept) as events:
            first = await take(events, 1)
        assert first[0].data == b"1"
        async with subscription(store, first[0].global_position, filter=only_kept) as events:
            assert [e.data for e in await take(events, 1)] == [b"3"]
            await store.append(f"{cat}-b", [NewEvent("Dropped", b"4"), NewEvent("Kept", b"5")])
            assert [e.data for e in await take(events, 1)] == [b"5"]
            assert await nothing_more(events)

    async def test_concurrent_writers_are_seen_once_in_order_by_a_tailing_subscriber(
        self, store: EventStore, cat: str
    ) -> None:
        head = await store.head_position()
        writers = await self.writer_stores(store, 6)
        try:
            expected_ids = await self._stress(store, writers, cat, head)
        finally:
            for extra in writers:
                if extra is not store:
                    await extra.close()
        assert len(expected_ids) == 1800

    async def _stress(
        self, store: EventStore, writers: Sequence[EventStore], cat: str, head: int
    ) -> set[uuid.UUID]:
        """6 writers x 300 events while one subscriber tails the log: 4 append batch by batch, 2 append_many.

        An append_many writer spreads each batch over three parts (two for its own main stream, one for a
        side stream), so concurrent multi-stream transactions interleave with single appends.
        """
        sizes = [1, 7, 1, 50, 3, 1, 100, 2, 1, 20, 15, 99]  # sums to 300
        written: set[uuid.UUID] = set()
        streams: dict[str, list[uuid.UUID]] = {}

        async def write(number: int, writer: EventStore) -> None:
            for round_, size in enumerate(sizes):
                batch = new_events(size, prefix=f"w{number}r{round_}-")
                written.update(e.id for e in batch)
                if number < 4:
                    streams.setdefault(f"{cat}-w{number}", []).extend(e.id for e in batch)
                    await writer.append(f"{cat}-w{number}", batch)
                else:
                    await many(number, writer, batch)
                await asyncio.sleep(0)

        async def many(number: int, writer: EventStore, batch: list[NewEvent]) -> None:
            third = len(batch) // 3
            main, side = f"{cat}-w{number}", f"{cat}-w{number}side"
            chunks = [(main, batch[:third]), (side, batch[third : 2 * third]), (main, batch[2 * third :])]
            parts = [StreamAppend(name, events) for name, events in chunks if events]
            for part in parts:
                streams.setdefault(part.stream, []).extend(e.id for e in part.events)
            results = await writer.append_many(parts)
            assert all(isinstance(r, AppendResult) for r in results), results

        mine = EventFilter(categories=(cat,))
        async with subscription(store, head, filter=mine) as events:
            tail = asyncio.create_task(take(events, 1800, seconds=30))
            await asyncio.gather(*(write(n, w) for n, w in enumerate(writers)))
            seen = await tail
            assert await nothing_more(events, 0.2)
        positions = [e.global_position for e in seen]
        assert all(a < b for a, b in itertools.pairwise(positions)), "not in increasing order"
        assert [e.id for e in seen] != [] and {e.id for e in seen} == written and len(seen) == len(written)
        for name, ids in streams.items():
            stream = await store.read_stream(name)
            assert [e.id for e in stream] == ids
            assert [e.stream_position for e in stream] == list(range(len(ids)))
        return written

    async def writer_stores(self, store: EventStore, count: int) -> list[EventStore]:
        """Stores for concurrent writers: separate instances (connections) where the backend allows."""
        return [store] * count

    # -- deletion, truncation, retention ------------------------------------------------------------------

    async def test_a_deleted_stream_is_gone_from_every_read(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-gone", new_events(3, prefix="g"))
        await store.append(f"{cat}-kept", new_events(2, prefix="k"))
        await store.delete_stream(f"{cat}-gone")
        mine = EventFilter(categories=(cat,))
        assert await store.read_stream(f"{cat}-gone") == []
        assert await store.read_stream(f"{cat}-gone", 2**62, backwards=True) == []
        assert [e.data for e in await store.read_all(head, filter=mine)] == [b"k0", b"k1"]
        assert all(e.stream != f"{cat}-gone" for e in await store.read_all(head))
        async with subscription(store, head, filter=mine) as events:
            assert [e.data for e in await take(events, 2)] == [b"k0", b"k1"]
            assert await nothing_more(events)

    async def test_a_deleted_stream_can_be_started_again(self, store: EventStore, cat: str) -> None:
        """Soft deletion, as KurrentDB: the stream counts as absent; new events get positions after the old."""
        await store.append(f"{cat}-a", new_events(3))
        await store.delete_stream(f"{cat}-a")
        with pytest.raises(WrongExpectedVersion):
            await store.append(f"{cat}-a", new_events(1, prefix="x"), ExpectedVersion.STREAM_EXISTS)
        result = await store.append(f"{cat}-a", new_events(1, prefix="again"), ExpectedVersion.NO_STREAM)
        assert result.stream_position >= 3
        stored = await store.read_stream(f"{cat}-a")
        assert [(e.data, e.stream_position) for e in stored] == [(b"again0", result.stream_position)]

    async def test_truncate_removes_events_before_a_position(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-a", new_events(5))
        await store.truncate_stream(f"{cat}-a", 3)
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a")] == [3, 4]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", 4, backwards=True)] == [4, 3]
        assert [e.data for e in await store.read_all(head, filter=EventFilter(categories=(cat,)))] == [
            b"e3",
            b"e4",
        ]
        async with subscription(store, head, filter=EventFilter(categories=(cat,))) as events:
            assert [e.data for e in await take(events, 2)] == [b"e3", b"e4"]
            assert await nothing_more(events)
        assert (await store.append(f"{cat}-a", new_events(1, prefix="x"), 4)).stream_position == 5

    async def test_stream_metadata_round_trips(self, store: EventStore, cat: str) -> None:
        assert await store.get_stream_metadata(f"{cat}-a") == StreamMetadata()
        wanted = StreamMetadata(max_age=timedelta(hours=2), max_count=10)
        await store.set_stream_metadata(f"{cat}-a", wanted)
        assert await store.get_stream_metadata(f"{cat}-a") == wanted
        await store.set_stream_metadata(f"{cat}-a", StreamMetadata(max_count=3))
        assert await store.get_stream_metadata(f"{cat}-a") == StreamMetadata(max_count=3)
        assert await store.read_stream(f"{cat}-a") == []

    async def test_max_count_keeps_only_the_newest_events(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-a", new_events(5))
        await store.set_stream_metadata(f"{cat}-a", StreamMetadata(max_count=2))
        assert [e.data for e in await store.read_stream(f"{cat}-a")] == [b"e3", b"e4"]
        await store.append(f"{cat}-a", new_events(1, prefix="x"), 4)
        assert [e.data for e in await store.read_stream(f"{cat}-a")] == [b"e4", b"x0"]
        assert [e.data for e in await store.read_stream(f"{cat}-a", 9, backwards=True)] == [b"x0", b"e4"]
        if self.retention_hides_from_read_all:
            seen = await store.read_all(head, filter=EventFilter(categories=(cat,)))
            assert [e.data for e in seen] == [b"e4", b"x0"]

    async def test_max_age_hides_old_events(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        await store.append(f"{cat}-a", new_events(2, prefix="old"))
        await asyncio.sleep(1.2)
        await store.append(f"{cat}-a", new_events(1, prefix="new"))
        await store.set_stream_metadata(f"{cat}-a", StreamMetadata(max_age=timedelta(seconds=1)))
        assert [e.data for e in await store.read_stream(f"{cat}-a")] == [b"new0"]
        if self.retention_hides_from_read_all:
            seen = await store.read_all(head, filter=EventFilter(categories=(cat,)))
            assert [e.data for e in seen] == [b"new0"]

    # -- physical edits for erasure ----------------------------------------------------------------------

    async def test_events_naming_finds_stream_names_and_bodies_in_global_order(
        self, store: EventStore, cat: str
    ) -> None:
        subject, profile = uuid.uuid4().hex, str(uuid.uuid4())
        await store.append(f"{cat}-{subject}", [NewEvent("ByName", b'{"x":1}')])
        await store.append(
            f"{cat}-shared",
            [NewEvent("ByBody", f'{{"profiles":["{profile}"]}}'.encode()), NewEvent("Nobody", b'{"x":2}')],
        )
        await store.append(f"{cat}skip-1", [NewEvent("Skipped", f'{{"s":"{subject}"}}'.encode())])
        await store.append(f"{cat}-later", [NewEvent("Later", f'{{"s":"{subject}x"}}'.encode())])
        everywhere = await store.events_naming([subject, profile])
        assert [e.type for e in everywhere] == ["ByName", "ByBody", "Skipped", "Later"]
        positions = [e.global_position for e in everywhere]
        assert positions == sorted(positions)
        assert everywhere[1].data == f'{{"profiles":["{profile}"]}}'.encode()
        skipped = await store.events_naming([profile, subject], skip_categories=[f"{cat}skip", "other"])
        assert [e.type for e in skipped] == ["ByName", "ByBody", "Later"]
        many = [uuid.uuid4().hex for _ in range(40)]
        assert [e.type for e in await store.events_naming([*many, profile, *many])] == ["ByBody"]
        assert await store.events_naming([uuid.uuid4().hex]) == []
        assert await store.events_naming([]) == []
        with pytest.raises(ValueError):
            await store.events_naming([subject, ""])

    async def test_erase_events_deletes_and_rewrites_in_place(self, store: EventStore, cat: str) -> None:
        head = await store.head_position()
        mine = EventFilter(categories=(cat,))
        a = new_events(3, prefix="a")
        await store.append(f"{cat}-a", a)
        await store.append(f"{cat}-b", new_events(2, prefix="b"))
        before = await store.read_all(head, filter=mine)
        changes: dict[uuid.UUID, bytes | None] = {a[1].id: None, a[2].id: b"rewritten", uuid.uuid4(): None}
        if not self.edits_single_events:
            with pytest.raises(PhysicalEditUnsupported):
                await store.erase_events(changes)
            return
        assert await store.erase_events(changes) == 2
        after = await store.read_all(head, filter=mine)
        kept = [e for e in before if e.id != a[1].id]
        assert [
            (e.id, e.stream, e.stream_position, e.global_position, e.type, e.metadata) for e in after
        ] == [(e.id, e.stream, e.stream_position, e.global_position, e.type, e.metadata) for e in kept]
        assert [e.data for e in after] == [b"a0", b"rewritten", b"b0", b"b1"]
        assert [e.data for e in await store.read_stream(f"{cat}-a")] == [b"a0", b"rewritten"]
        assert [e.stream_position for e in await store.read_stream(f"{cat}-a", backwards=True)] == [2, 0]
        async with subscription(store, head, filter=mine) as events:
            assert [e.data for e in await take(events, 4)] == [b"a0", b"rewritten", b"b0", b"b1"]
            assert await nothing_more(events)
        assert [e.data for e in await store.events_naming([f"{cat}-a"])] == [b"a0", b"rewritten"]
        assert await store.erase_events({a[1].id: None}) == 0
        assert await store.erase_events({}) == 0
        assert (await store.append(f"{cat}-a", new_events(1, prefix="x"), 2)).stream_position == 3

    async def test_a_live_subscription_never_delivers_an_erased_body(
        self, store: EventStore, cat: str
    ) -> None:
        if not self.edits_single_events:
            pytest.skip("this backend cannot erase single events")
        head = await store.head_position()
        events_ = new_events(4, prefix="s")
        await store.append(f"{cat}-a", events_)
        async with subscription(store, head, filter=EventFilter(categories=(cat,))) as events:
            assert [e.data for e in await take(events, 1)] == [b"s0"]  # the page read holds all four
            assert await store.erase_events({events_[1].id: None, events_[2].id: b"new"}) == 2
            assert [e.data for e in await take(events, 2)] == [b"new", b"s3"]
            await store.erase_events({events_[0].id: b"too late"})
            await store.append(f"{cat}-a", new_events(1, prefix="live"))
            assert [e.data for e in await take(events, 1)] == [b"live0"]

    async def test_reclaim_runs(self, store: EventStore, cat: str) -> None:
        events_ = new_events(2)
        await store.append(f"{cat}-a", events_)
        if self.edits_single_events:
            await store.erase_events({events_[0].id: None})
        await store.delete_stream(f"{cat}-a")
        assert await store.reclaim() is self.reclaims
        assert await store.read_stream(f"{cat}-a") == []

    # -- durability ---------------------------------------------------------------------------------------

    async def test_restart_from_a_checkpoint(self, cat: str) -> None:
        if not self.durable:
            pytest.skip("the in-memory store keeps nothing once closed")
        first = await self.open_store()
        head = await first.head_position()
        batch = new_events(3, prefix="before")
        original = await first.append(f"{cat}-a", batch)
        async with subscription(first, head, filter=EventFilter(categories=(cat,))) as events:
            checkpoint = (await take(events, 3))[-1].global_position
        await first.close()
        reopened = await self.open_store()
        try:
            assert await reopened.append(f"{cat}-a", batch) == original
            await reopened.append(f"{cat}-a", new_events(2, prefix="after"), 2)
            resumed = reopened.subscribe(checkpoint, filter=EventFilter(categories=(cat,)))
            async with closing(resumed) as events:
                assert [e.data for e in await take(events, 2)] == [b"after0", b"after1"]
                assert await nothing_more(events)
            assert [e.data for e in await reopened.read_stream(f"{cat}-a")][:3] == [e.data for e in batch]
        finally:
            await reopened.close()
