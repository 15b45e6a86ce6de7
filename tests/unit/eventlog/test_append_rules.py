"""The append rules every adapter shares: expected versions, idempotency decisions, batch checks."""

from __future__ import annotations

import uuid

import pytest

from cdp.eventlog import (
    AppendResult,
    EventIdConflict,
    EventStoreError,
    ExpectedVersion,
    NewEvent,
    StreamAppend,
    WrongExpectedVersion,
)
from cdp.eventlog.common import (
    StreamState,
    check_batch,
    check_expected,
    plan_append_many,
    replayed_result,
)
from cdp.eventlog.port import check_parts


@pytest.mark.parametrize(
    ("expected", "current", "ok"),
    [
        (ExpectedVersion.ANY, None, True),
        (ExpectedVersion.ANY, 4, True),
        (ExpectedVersion.NO_STREAM, None, True),
        (ExpectedVersion.NO_STREAM, 0, False),
        (ExpectedVersion.STREAM_EXISTS, None, False),
        (ExpectedVersion.STREAM_EXISTS, 0, True),
        (3, 3, True),
        (3, 2, False),
        (0, None, False),
    ],
)
def test_check_expected(expected: ExpectedVersion | int, current: int | None, ok: bool) -> None:
    if ok:
        check_expected("s-1", expected, current)
        return
    with pytest.raises(WrongExpectedVersion) as caught:
        check_expected("s-1", expected, current)
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("s-1", expected, current)


def test_a_fresh_batch_is_not_a_replay() -> None:
    assert replayed_result("s-1", [NewEvent("T", b"")], []) is None


def test_a_fully_stored_batch_replays_the_original_result() -> None:
    events = [NewEvent("T", b"") for _ in range(3)]
    stored = [(e.id, "s-1", 5 + i, 100 + i) for i, e in enumerate(events)]
    assert replayed_result("s-1", events, list(reversed(stored))) == AppendResult(7, 102)


@pytest.mark.parametrize(
    "stored_as",
    [
        "partly",  # only some ids stored
        "elsewhere",  # stored in another stream
        "reordered",  # stored, but not in this order
    ],
)
def test_anything_but_an_exact_replay_is_a_conflict(stored_as: str) -> None:
    events = [NewEvent("T", b"") for _ in range(2)]
    rows = {
        "partly": [(events[0].id, "s-1", 0, 10)],
        "elsewhere": [(e.id, "other-1", i, 10 + i) for i, e in enumerate(events)],
        "reordered": [(events[0].id, "s-1", 1, 11), (events[1].id, "s-1", 0, 10)],
    }[stored_as]
    with pytest.raises(EventIdConflict):
        replayed_result("s-1", events, rows)


def test_a_batch_must_be_non_empty_with_distinct_ids() -> None:
    with pytest.raises(ValueError, match="at least one"):
        check_batch("s-1", [])
    with pytest.raises(ValueError, match="stream"):
        check_batch("", [NewEvent("T", b"")])
    same = uuid.uuid4()
    with pytest.raises(EventIdConflict):
        check_batch("s-1", [NewEvent("T", b"", id=same), NewEvent("T", b"", id=same)])


def test_a_plan_decides_each_part_as_a_sequential_append_would() -> None:
    stored_events = [NewEvent("T", b"") for _ in range(2)]
    stored = [(e.id, "s-1", i, 40 + i) for i, e in enumerate(stored_events)]
    fresh = [NewEvent("T", b"") for _ in range(3)]
    plan = plan_append_many(
        [
            StreamAppend("s-1", fresh[:2], 1),  # after the stored two
            StreamAppend("s-1", stored_events, ExpectedVersion.NO_STREAM),  # a retry: its original result
            StreamAppend("s-2", fresh[2:], ExpectedVersion.STREAM_EXISTS),  # no such stream
            StreamAppend("s-2", [fresh[1], NewEvent("T", b"")]),  # overlaps the first part
            StreamAppend("s-1", fresh[:2], 0),  # a retry of the first part, within the call
        ],
        stored,
        {"s-1": StreamState(1), "s-2": StreamState(6, deleted=True)},
    )
    assert [(w.stream, w.stream_position, w.event) for w in plan.writes] == [
        ("s-1", 2, fresh[0]),
        ("s-1", 3, fresh[1]),
    ]
    assert plan.versions == {"s-1": 3}
    first, retried, missing, overlap, replayed = plan.results([90, 91])
    assert first == AppendResult(3, 91) == replayed
    assert retried == AppendResult(1, 41)
    assert isinstance(missing, WrongExpectedVersion) and missing.actual is None
    assert isinstance(overlap, EventIdConflict)


def test_a_deleted_stream_restarts_after_its_old_last_position() -> None:
    event = NewEvent("T", b"")
    plan = plan_append_many(
        [StreamAppend("s-1", [event], ExpectedVersion.NO_STREAM)], [], {"s-1": StreamState(6, deleted=True)}
    )
    assert [(w.stream_position, w.event) for w in plan.writes] == [(7, event)]
    assert plan.results([12]) == [AppendResult(7, 12)]


def test_an_empty_part_is_refused_before_anything_is_planned() -> None:
    with pytest.raises(ValueError, match="at least one"):
        check_parts([StreamAppend("s-1", [NewEvent("T", b"")]), StreamAppend("s-2", [])])
    with pytest.raises(ValueError, match="stream"):
        check_parts([StreamAppend("", [NewEvent("T", b"")])])


def test_event_id_conflict_is_importable_from_its_old_home() -> None:
    from cdp.eventlog import common, port

    assert common.EventIdConflict is port.EventIdConflict is EventIdConflict
    assert issubclass(EventIdConflict, EventStoreError)
