"""Event log benchmark: appends/s through the port next to the raw driver, read_all rate, wake-up latency.

    .venv/bin/python -m bench.eventlog                 # quick (~30 s): SQLite and PostgreSQL
    .venv/bin/python -m bench.eventlog --scale 4       # more events per measurement
    .venv/bin/python -m bench.eventlog --postgres skip # SQLite only
    .venv/bin/python -m bench.eventlog --only group    # just the group-commit figures (append_many)
    .venv/bin/python -m bench.eventlog --only durability  # SQLite synchronous=NORMAL vs FULL

The raw baseline inserts the same rows into an identical table with the bare driver (sqlite3 executemany;
psycopg binary COPY) inside one transaction per batch, with no expected-version or idempotency checks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.eventlog.group import measure_group, print_group, time_group
from bench.eventlog.raw import RawPostgres, RawSQLite, Rows
from cdp.eventlog import START, EventFilter, EventStore, NewEvent, open_event_store
from cdp.eventlog.common import encode_metadata
from cdp.eventlog.postgres import PostgresEventStore
from cdp.eventlog.sqlite import SQLiteEventStore, Synchronous

BATCHES = (1, 100, 2500)
PAYLOAD = b'{"event":"Order Completed","properties":{"revenue":42.5,"currency":"EUR"},"anonymousId":"a1"}' * 2


@dataclass
class Rate:
    """One appends/s measurement of the port and of the raw driver."""

    batch: int
    events: int
    port: float
    raw: float


def events_for(batch: int, scale: float) -> int:
    """How many events to append at a batch size (fewer for batch 1: each is a commit)."""
    base = {1: 1000, 100: 10_000, 2500: 25_000}.get(batch, 10_000)
    return max(batch, int(base * scale) // batch * batch)


def new_batch(size: int) -> list[NewEvent]:
    """`size` events like an ingested Segment track call."""
    return [NewEvent("MessageCollected", PAYLOAD, {"source": "bench"}) for _ in range(size)]


def raw_rows(stream: str, start: int, events: list[NewEvent]) -> Rows:
    """The rows the port would insert for a batch."""
    return [
        (e.id, stream, "bench", start + i, e.type, e.data, encode_metadata(e.metadata))
        for i, e in enumerate(events)
    ]


async def time_port(store: EventStore, batch: int, total: int, tag: str) -> float:
    """Events/s appending `total` events in batches to 50 rotating streams."""
    batches = [new_batch(batch) for _ in range(total // batch)]
    started = time.perf_counter()
    for i, events in enumerate(batches):
        await store.append(f"bench{tag}-{i % 50}", events)
    return total / (time.perf_counter() - started)


def time_raw(insert: Callable[[str, int, Rows], None], batch: int, total: int, tag: str) -> float:
    """Events/s inserting the same rows with the bare driver."""
    batches = [new_batch(batch) for _ in range(total // batch)]
    positions: dict[str, int] = {}
    started = time.perf_counter()
    for i, events in enumerate(batches):
        stream = f"bench{tag}-{i % 50}"
        start = positions.get(stream, 0)
        insert(stream, start, raw_rows(stream, start, events))
        positions[stream] = start + len(events)
    return total / (time.perf_counter() - started)


async def time_read_all(store: EventStore) -> tuple[int, float]:
    """(events, events/s) reading the whole log in pages of 1,000."""
    count, position = 0, START
    started = time.perf_counter()
    while page := await store.read_all(position, limit=1000):
        count += len(page)
        position = page[-1].global_position
    return count, count / (time.perf_counter() - started)


async def latency_in_process(store: EventStore, samples: int) -> list[float]:
    """Milliseconds from append() being called to the subscriber receiving the event, same process."""
    category = "lat" + uuid.uuid4().hex[:8]
    head = await store.head_position()
    sent: dict[uuid.UUID, float] = {}
    delays: list[float] = []
    subscription = store.subscribe(head, filter=EventFilter(categories=(category,)))

    async def receive() -> None:
        async for event in subscription:
            delays.append((time.perf_counter() - sent[event.id]) * 1000)
            if len(delays) == samples:
                return

    receiver = asyncio.create_task(receive())
    await asyncio.sleep(0.1)
    for _ in range(samples):
        event = NewEvent("Ping", b"")
        sent[event.id] = time.perf_counter()
        await store.append(f"{category}-1", [event])
        await asyncio.sleep(0.005)
    await asyncio.wait_for(receiver, 30)
    return delays


WRITER = """
import asyncio, sys, time
from cdp.eventlog import NewEvent, open_event_store, sqlite_path
from cdp.eventlog.sqlite import SQLiteEventStore
async def main(url, stream, samples, synchronous):
    store = SQLiteEventStore(sqlite_path(url), synchronous=synchronous) if synchronous else open_event_store(url)
    await store.head_position()
    for _ in range(samples):
        await store.append(stream, [NewEvent("Ping", repr(time.time()).encode())])
        await asyncio.sleep(0.01)
    await store.close()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


async def latency_cross_process(
    store: EventStore, url: str, samples: int, synchronous: Synchronous | None = None
) -> list[float]:
    """Milliseconds from another process's append() call to delivery here (wall clocks of one machine).

    `synchronous` sets the writer's level on a SQLite log (default: the log's own).
    """
    category = "xlat" + uuid.uuid4().hex[:8]
    head = await store.head_position()
    delays: list[float] = []
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, url, f"{category}-1", str(samples), synchronous or ""
    )
    async for event in store.subscribe(head, filter=EventFilter(categories=(category,))):
        delays.append((time.time() - float(event.data)) * 1000)
        if len(delays) == samples:
            break
    await writer.wait()
    return delays


def percentiles(delays: list[float]) -> str:
    """p50 / p99 in milliseconds."""
    cuts = statistics.quantiles(delays, n=100)
    return f"p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms (n={len(delays)})"


def print_rates(backend: str, rates: list[Rate]) -> None:
    """A table of appends/s."""
    print(f"\n{backend}: appends (events/s, best of the rounds)")
    print(f"  {'batch':>6} {'events':>8} {'port':>10} {'raw':>10} {'port/raw':>9}")
    for r in rates:
        print(f"  {r.batch:>6} {r.events:>8} {r.port:>10.0f} {r.raw:>10.0f} {r.port / r.raw:>9.2f}")


async def measure(
    backend: str,
    store: EventStore,
    raw: RawSQLite | RawPostgres,
    url: str,
    args: argparse.Namespace,
) -> None:
    """Every figure for one backend (or only the group-commit ones)."""
    if args.only == "all":
        await measure_appends(backend, store, raw.insert, url, args)
    else:
        print(f"\n{backend}:")
    rounds = max(1, int(50 * args.scale))
    print_group(await measure_group(store, raw.insert_many, args.callers, rounds, args.repeat))


async def measure_appends(
    backend: str, store: EventStore, raw: Callable[[str, int, Rows], None], url: str, args: argparse.Namespace
) -> None:
    """Sequential appends at each batch size, read_all, and subscription latency."""
    rates = []
    for batch in args.batches:
        total = events_for(batch, args.scale)
        raw_rate = port_rate = 0.0
        for round_ in range(args.repeat):  # interleaved, best of N: the machine is shared and noisy
            raw_rate = max(raw_rate, time_raw(raw, batch, total, f"{batch}r{round_}"))
            port_rate = max(port_rate, await time_port(store, batch, total, f"{batch}r{round_}"))
        rates.append(Rate(batch, total, port_rate, raw_rate))
    print_rates(backend, rates)
    count, rate = await time_read_all(store)
    print(f"  read_all: {count} events at {rate:.0f} events/s")
    print(
        f"  subscription latency, same process:  {percentiles(await latency_in_process(store, args.samples))}"
    )
    cross = await latency_cross_process(store, url, args.samples)
    print(f"  subscription latency, other process: {percentiles(cross)}")


async def bench_sqlite(args: argparse.Namespace, folder: Path) -> None:
    """SQLite: port and raw on two files in a temporary folder (both at the log's default, FULL)."""
    url = f"sqlite:///{folder / 'port.db'}"
    store = open_event_store(url)
    raw = RawSQLite(str(folder / "raw.db"))
    try:
        await run_timed(measure("SQLite (WAL, synchronous=FULL)", store, raw, url, args))
    finally:
        raw.close()
        await store.close()


async def bench_durability(args: argparse.Namespace, folder: Path) -> None:
    """The cost of FULL: the same appends on two SQLite files, NORMAL and FULL, interleaved, best of N."""
    levels: tuple[Synchronous, ...] = ("NORMAL", "FULL")
    stores = {
        level: SQLiteEventStore(str(folder / f"sync-{level}.db"), synchronous=level) for level in levels
    }
    try:
        print(
            "\nSQLite durability: the port's appends at synchronous=NORMAL and FULL (events/s, best of rounds)"
        )
        print(f"  {'':<28}{'NORMAL':>10}{'FULL':>10}{'FULL/NORMAL':>13}")
        for batch in args.batches:
            total = events_for(batch, args.scale)
            best = dict.fromkeys(levels, 0.0)
            for round_ in range(args.repeat):
                for level, store in stores.items():
                    rate = await time_port(store, batch, total, f"d{batch}r{round_}")
                    best[level] = max(best[level], rate)
            print_durability(f"append, batch {batch}", best["NORMAL"], best["FULL"])
        grouped = dict.fromkeys(levels, 0.0)
        rounds = max(1, int(50 * args.scale))
        for round_ in range(args.repeat):
            for level, store in stores.items():
                rate, _ = await time_group(store, args.callers, rounds, f"dg{round_}")
                grouped[level] = max(grouped[level], rate)
        print_durability(f"group commit, {args.callers} callers", grouped["NORMAL"], grouped["FULL"])
        for level, store in stores.items():
            same = await latency_in_process(store, args.samples)
            url = f"sqlite:///{folder / f'sync-{level}.db'}"
            other = await latency_cross_process(store, url, args.samples, level)
            print(f"  latency at {level:<6} same process:  {percentiles(same)}")
            print(f"  latency at {level:<6} other process: {percentiles(other)}")
    finally:
        for store in stores.values():
            await store.close()


def print_durability(label: str, normal: float, full: float) -> None:
    """One row of the durability table."""
    print(f"  {label:<28}{normal:>10.0f}{full:>10.0f}{full / normal:>13.2f}")


async def bench_postgres(args: argparse.Namespace) -> None:
    """PostgreSQL: port and raw in two throwaway schemas, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    separator = "&" if "?" in args.postgres else "?"
    url = f"{args.postgres}{separator}schema=bench_port_{suffix}"
    store = open_event_store(url)
    assert isinstance(store, PostgresEventStore)
    raw = RawPostgres(args.postgres, f"bench_raw_{suffix}")
    try:
        await run_timed(measure("PostgreSQL", store, raw, url, args))
    finally:
        raw.close()
        await store.drop_schema()
        await store.close()


async def run_timed(work: Awaitable[None]) -> None:
    """Run a backend's measurements and say how long they took."""
    started = time.perf_counter()
    await work
    print(f"  (measured in {time.perf_counter() - started:.1f} s)")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.eventlog", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of events appended")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=list(BATCHES))
    parser.add_argument("--repeat", type=int, default=3, help="rounds per batch size; the best is shown")
    parser.add_argument("--samples", type=int, default=200, help="latency samples per measurement")
    parser.add_argument(
        "--callers", type=int, default=100, help="concurrent callers for the group-commit figures"
    )
    parser.add_argument(
        "--only",
        choices=("all", "group", "durability"),
        default="all",
        help="every figure, only the group-commit ones, or only SQLite NORMAL vs FULL",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
        help="server for the PostgreSQL figures, or 'skip'",
    )
    return parser.parse_args()


async def main() -> None:
    """Run every benchmark."""
    args = parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, payload {len(PAYLOAD)} bytes/event")
    with tempfile.TemporaryDirectory(prefix="cdp-bench-") as folder:
        if args.only in ("all", "durability"):
            await bench_durability(args, Path(folder))
        if args.only == "durability":
            return
        await bench_sqlite(args, Path(folder))
    if args.postgres != "skip":
        await bench_postgres(args)


if __name__ == "__main__":
    asyncio.run(main())
