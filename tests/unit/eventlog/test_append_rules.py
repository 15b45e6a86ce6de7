"""The append rules every adapter shares: expected versions, idempotency decisions, batch checks."""

from __future__ import annotations

import uuid

import pytest

from cdp.eventlog import (
    AppendResult,
    EventIdConflict,
    ExpectedVersion,
    NewEvent,
    WrongExpectedVersion,
)
from cdp.eventlog.common import check_batch, check_expected, replayed_result


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
