"""Ingest end to end: gRPC Batch throughput against the raw append ceiling, and single-Track latency.

Run: `.venv/bin/python -m bench.ingest [--messages N] [--backends sqlite,postgres]`.

The ingest server runs in this process (as in production: one asyncio loop); the load comes from a child
process, so client and server each have a core of this 2-core machine. Every accepted message is validated,
encrypted with its subject's key, durably appended through the group committer and acknowledged.

The ceiling is the raw driver (sqlite3 executemany / psycopg COPY) inserting the same number of events of the
same size, 100 per transaction, into an identical table in the same run: what storage alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.child import in_child, result_of
from bench.eventlog.raw import RawPostgres, RawSQLite
from bench.ingest.load import BATCH, PEOPLE, batches, load_batches, load_tracks
from cdp.eventlog import open_event_store
from cdp.eventlog.port import NewEvent
from cdp.runtime.logging import configure_logging
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.ingest.main import build

POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def raw_ceiling(insert: Any, total: int, event_bytes: int) -> float:
    """Events/s of the raw driver inserting `total` events of `event_bytes` each, 100 per transaction."""
    data = os.urandom(event_bytes)
    started = time.perf_counter()
    for start in range(0, total, BATCH):
        stream = f"subject-{uuid.uuid4().hex}"
        events = [NewEvent(type="MessageCollected", data=data) for _ in range(min(BATCH, total - start))]
        rows = [
            (e.id, stream, "subject", i, e.type, e.data, '{"actor":"source:bench"}')
            for i, e in enumerate(events)
        ]
        insert(stream, 0, rows)
    return total / (time.perf_counter() - started)


async def bench_backend(name: str, event_store: str, folder: Path, args: argparse.Namespace) -> None:
    env = {"CDP_DATA_DIR": str(folder), "CDP_WRITE_KEYS": "bench:bench-key", "CDP_HTTP_PORT": "0"}
    if event_store:
        env["CDP_EVENT_STORE"] = event_store
    settings = replace(Settings.from_env(env), grace_seconds=1.0)
    server = GrpcServer(await build(settings), settings, port=0)
    await server.start()
    run = uuid.uuid4().hex[:8]
    try:
        # First sight of every person: their data keys are created (and fsynced) on the way.
        first = in_child(load_batches, server.address, batches(PEOPLE, f"first-{run}"), args.concurrency)
        first_accepted, first_seconds = await result_of(*first)
        # Then the steady state: returning people, whose keys are known.
        process = in_child(load_batches, server.address, batches(args.messages, run), args.concurrency)
        accepted, seconds = await result_of(*process)
        log = open_event_store(settings.event_store)
        sample = await log.read_all(limit=1)
        await log.close()
        event_bytes = len(sample[0].data) if sample else 800
        tracks = in_child(load_tracks, server.address, args.rate, args.seconds, f"t-{run}")
        latencies = sorted(await result_of(*tracks))
    finally:
        await server.stop()
    raw: RawSQLite | RawPostgres = (
        RawSQLite(str(folder / "raw.db")) if name == "sqlite" else RawPostgres(POSTGRES, f"bench_raw_{run}")
    )
    ceiling = raw_ceiling(raw.insert, args.messages, event_bytes)
    raw.close()
    throughput = accepted / seconds
    print(
        f"{name:<9} first sight of {PEOPLE} people (keys created): {first_accepted / first_seconds:,.0f} events/s"
    )
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{name:<9} gRPC Batch: {accepted} accepted in {seconds:.2f}s = {throughput:,.0f} events/s | "
        f"raw ceiling {ceiling:,.0f} events/s ({event_bytes} B/event) | ratio {throughput / ceiling:.2f} (target ≥ 0.5)"
    )
    print(
        f"{name:<9} Track at {args.rate:.0f}/s for {args.seconds:.0f}s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {latencies[-1]:.2f} ms over {len(latencies)} calls (target p99 < 10 ms)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages sent in Batch calls")
    parser.add_argument("--concurrency", type=int, default=8, help="Batch calls in flight")
    parser.add_argument("--rate", type=float, default=1000.0, help="Track calls per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the Track load lasts")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    configure_logging("warning")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-ingest-{backend}-") as folder:
            url = "" if backend == "sqlite" else f"{POSTGRES}?schema=bench_ingest_{uuid.uuid4().hex[:8]}"
            await bench_backend(backend, url, Path(folder), args)


if __name__ == "__main__":
    asyncio.run(main())
