"""Waiting for a condition that another task or process makes true: generous caps, never a timing assertion.

The cap only bounds a test that would otherwise hang; a test never depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator

WITHIN = 60.0
"""Seconds before giving up (a loaded 2-core machine can be a hundred times slower than an idle one)."""


async def eventually(condition: Callable[[], bool | Awaitable[bool]], within: float = WITHIN) -> None:
    """Return as soon as `condition()` (sync or async) is true; AssertionError after `within` seconds."""
    deadline = time.monotonic() + within
    for delay in _delays():
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:.0f} s: {condition}")
        await asyncio.sleep(delay)


def _delays() -> Iterator[float]:
    """5 ms between looks at first, then up to 50 ms (a slow condition is not looked at 200 times a second)."""
    delay = 0.005
    while True:
        yield delay
        delay = min(0.05, delay * 1.5)
