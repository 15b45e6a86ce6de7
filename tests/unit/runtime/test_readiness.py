"""Readiness: a dependency that stops answering takes the service out of SERVING, and its return brings it back."""

from __future__ import annotations

import asyncio

import pytest

from cdp.runtime.readiness import Readiness, watch


class Switch:
    """A probe whose answer the test flips: up, refusing, or hanging past the bound."""

    def __init__(self) -> None:
        self.state = "up"

    async def __call__(self) -> None:
        if self.state == "refusing":
            raise ConnectionRefusedError("refused")
        if self.state == "hanging":
            await asyncio.sleep(3600)


async def test_a_failing_or_silent_dependency_is_not_serving_until_it_answers_again() -> None:
    readiness = Readiness()
    log, read_model = Switch(), Switch()
    published: list[bool] = []
    changed = asyncio.Event()

    async def on_change() -> None:
        published.append(readiness.serving)
        changed.set()

    async def until(condition: bool) -> None:
        async with asyncio.timeout(30):
            while readiness.serving != condition:
                changed.clear()
                await changed.wait()

    task = asyncio.create_task(
        watch(
            {"event log": log, "read model": read_model},
            readiness,
            bound=0.05,
            on_change=on_change,
            every=0.01,
        )
    )
    try:
        log.state = "refusing"
        await until(False)
        assert "refused" in readiness.reasons()["event log"]
        log.state = "up"
        await until(True)
        read_model.state = "hanging"
        await until(False)
        assert readiness.reasons() == {"read model": "no answer within the dependency timeout"}
        read_model.state = "up"
        await until(True)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert published == [False, True, False, True]  # each change published once


def test_something_failed_for_good_stays_not_serving_whatever_the_probes_say() -> None:
    readiness = Readiness()
    readiness.mark_failed("reactor identity-resolver", "parked")
    readiness.mark_down("event log", "refused")
    assert readiness.mark_up("event log") is not None
    assert readiness.mark_up("event log") is None
    assert not readiness.serving
    assert readiness.reasons() == {"reactor identity-resolver": "parked"}
