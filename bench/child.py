"""Running a benchmark's load (or a clean measurement) in a fresh process, so it has a core and a heap of its own.

The child is spawned, not forked (it imports what it needs, and inherits no threads or peak memory), and answers
through a pipe: `target(*args, sender)` ends with `sender.send(result)`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any


def in_child(target: Any, *args: Any) -> Any:
    """Start `target(*args, sender)` in a fresh process; the (process, receiver) to wait on."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, sender))
    process.start()
    sender.close()  # the child holds its own end: if it dies, recv raises instead of waiting for ever
    return process, receiver


def wait_result(process: Any, receiver: Any) -> Any:
    """The child's answer, once it has exited."""
    value = receiver.recv()
    process.join()
    return value


async def result_of(process: Any, receiver: Any) -> Any:
    """The child's answer, read in a worker thread so that a server in this loop keeps serving."""
    return await asyncio.to_thread(wait_result, process, receiver)
