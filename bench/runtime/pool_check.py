"""What the PostgreSQL event log's connection check costs: single-event appends with it and without it.

    .venv/bin/python -m bench.runtime.pool_check [--appends 2000] [--rounds 3]

The pool checks each connection as it hands it out, so a connection an outage broke is replaced instead of
failing the first call after the outage. Sequential one-event appends take one connection each: the worst case
for that cost. Three variants, in the same process against the same server (CDP_TEST_POSTGRES), taking turns
append by append (so load from other processes hits all three alike), best round kept: no check (the baseline), the store's check (a round trip only when the socket is readable),
and psycopg_pool's `check_connection` (a round trip on every checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import psycopg
from psycopg_pool import AsyncConnectionPool

from cdp.eventlog import NewEvent
from cdp.eventlog.postgres import PostgresEventStore, split_url

POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def interleaved(stores: dict[str, PostgresEventStore], appends: int) -> dict[str, float]:
    """Seconds each store spends on `appends` single-event appends, taken in turns so load drift hits all alike."""
    spent = dict.fromkeys(stores, 0.0)
    for n in range(appends):
        for name, store in stores.items():
            started = time.perf_counter()
            await store.append(f"bench-{name[:2]}-{uuid.uuid4().hex[:8]}{n}", [NewEvent("Ping", b"{}")])
            spent[name] += time.perf_counter() - started
    return spent


async def measure(appends: int, rounds: int) -> dict[str, float]:
    """Best µs per append of each variant."""
    conninfo, _ = split_url(POSTGRES)
    schema = f"bench_check_{uuid.uuid4().hex[:8]}"
    stores = {name: PostgresEventStore(conninfo, schema=schema) for name in ("no check", "store's", "pool's")}
    stores["no check"]._pool._check = None
    stores["pool's"]._pool._check = AsyncConnectionPool.check_connection
    best = dict.fromkeys(stores, float("inf"))
    try:
        await interleaved(stores, 50)  # open the pools, create the schema, warm up
        for _ in range(rounds):
            for name, seconds in (await interleaved(stores, appends)).items():
                best[name] = min(best[name], seconds / appends * 1e6)
    finally:
        for store in stores.values():
            await store.close()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
    return best


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best = asyncio.run(measure(args.appends, args.rounds))
    for name, micros in best.items():
        print(f"{name:9s} check: {micros:5.0f} µs/append  ({micros - best['no check']:+4.0f} µs vs none)")


if __name__ == "__main__":
    main()
