"""Whether a service can serve right now, and why not: one state behind gRPC health and ingest's HTTP /health.

A service is out of SERVING while a dependency it probes (the event log, its read model) does not answer, and
back in by itself once it does; a failed reactor or background task takes it out for good (that needs a
restart). Transport-free: the gRPC server and the HTTP edge each publish the state their own way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from cdp.faults import describe

log = structlog.get_logger("cdp.readiness")

PROBE_EVERY_SECONDS = 1.0
"""How often each dependency is probed: a cheap read (the log's head position, `SELECT 1`), so an idle service
stays well under bench.idle's budget, and an outage shows in health within about a second plus the timeout."""

Probe = Callable[[], Awaitable[object]]


class Readiness:
    """The reasons a service is not serving now; none means SERVING."""

    def __init__(self) -> None:
        self._down: dict[str, tuple[str, float]] = {}  # what → (why, since when, monotonic)
        self._failed: dict[str, str] = {}  # what broke for good → why

    @property
    def serving(self) -> bool:
        """No dependency is down and nothing has failed."""
        return not self._down and not self._failed

    def reasons(self) -> dict[str, str]:
        """What keeps the service out of SERVING, by what: `{"event log": "…"}`."""
        return {**{name: why for name, (why, _) in self._down.items()}, **self._failed}

    def mark_down(self, dependency: str, why: str) -> bool:
        """`dependency` does not answer; True when that is news."""
        if dependency in self._down:
            return False
        self._down[dependency] = (why, time.monotonic())
        return True

    def mark_up(self, dependency: str) -> float | None:
        """`dependency` answers again; how many seconds it was down, or None when it was not."""
        was = self._down.pop(dependency, None)
        return None if was is None else time.monotonic() - was[1]

    def mark_failed(self, what: str, why: str) -> None:
        """Something the service needs has stopped for good (a reactor, a background task)."""
        self._failed[what] = why


async def watch(
    probes: Mapping[str, Probe],
    readiness: Readiness,
    *,
    bound: float,
    on_change: Callable[[], Awaitable[None]],
    every: float = PROBE_EVERY_SECONDS,
) -> None:
    """Probe each dependency every `every` seconds, each bounded by `bound` seconds; keep `readiness` current
    and call `on_change` whenever it changed. Runs until cancelled."""
    while True:
        # Together, each publishing its own change: a read model that refuses at once is reported at once, not
        # after a log that keeps its probe waiting for the whole bound.
        await asyncio.gather(
            *(_probe(name, probe, readiness, bound, on_change) for name, probe in probes.items())
        )
        await asyncio.sleep(every)


async def _probe(
    name: str, probe: Probe, readiness: Readiness, bound: float, on_change: Callable[[], Awaitable[None]]
) -> None:
    """Run one probe within `bound` seconds and record its answer, calling `on_change` when it changed."""
    try:
        async with asyncio.timeout(bound):
            await probe()
    except asyncio.CancelledError:
        raise
    except Exception as error:
        why = (
            "no answer within the dependency timeout" if isinstance(error, TimeoutError) else describe(error)
        )
        if readiness.mark_down(name, why):
            log.warning("dependency_unreachable", dependency=name, cause=why, timeout_seconds=bound)
            await on_change()
        return
    down_for = readiness.mark_up(name)
    if down_for is not None:
        log.info("dependency_restored", dependency=name, down_seconds=round(down_for, 1))
        await on_change()
