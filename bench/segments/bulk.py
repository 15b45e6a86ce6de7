"""Bulk evaluation over N profiles: the segments issue's three-condition audience, counted and previewed.

    .venv/bin/python -m bench.segments [--profiles 1000000] [--backends sqlite,postgres] [--postgres URL]
    .venv/bin/python -m bench.segments.latency        # event → membership change through the local cluster

It fills a segments read model (a SQLite file, or a throwaway PostgreSQL schema) with synthetic profiles through
the loader the tests use, then times what PreviewAudience and a definition's recompute run, compiled by
`services.segments.sqlcompile`:

- the three-condition audience `traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 and
  trait("lifetime_value") > 100`, counted (target < 5 s at 1M);
- the preview of it through `Queries.preview` (size and the first 10 ids), the code the RPC calls;
- other shapes (an `or`, an event `first`, an event `sum`, a funnel), so a slow shape is visible too.

Baseline in the same run: a plain `SELECT count(*)` over the profiles table, so the ratios say what the conditions
cost on this machine. Memory: the read model's bytes per million profiles, and the growth of this process's peak
RSS while evaluating (on SQLite the database engine runs in this process; on PostgreSQL the server's work_mem is
the bound and is not in this figure), measured in a fresh process that only evaluates.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from bench.child import in_child, wait_result
from cdp.sqlengine import create_read_model_engine, create_tables
from services.segments import sqlcompile
from services.segments import tables as t
from services.segments.domain.language import parse_condition
from services.segments.domain.times import DAY, SECOND
from services.segments.loading import EventRecord, ProfileRecord, insert_profiles
from services.segments.policy import Definitions
from services.segments.queries import Queries

AUDIENCE = 'traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 and trait("lifetime_value") > 100'
SHAPES = {
    "or of two traits and an event count": (
        'traits.plan = "team" or traits.age > 70 or event("Signed In").count(within 7d) >= 2'
    ),
    "first event's property": 'event("Order Completed").first("revenue") > 150',
    "sum of a property in a window": 'event("Order Completed").sum("revenue", within 30d) > 300',
    "funnel within 7 days": 'event("Product Viewed") then event("Order Completed") within 7d',
}
NOW = 1_790_000_000 * SECOND
CHUNK = 20_000
POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def populate(engine: Engine, profiles: int, seed: int = 7) -> int:
    """Synthetic profiles: a plan, 2 to 5 events each within 60 days, a lifetime value; returns the events."""
    rng = random.Random(seed)
    position, events = 0, 0
    for start in range(0, profiles, CHUNK):
        records = []
        for number in range(start, min(start + CHUNK, profiles)):
            mine = []
            for _ in range(rng.randint(2, 5)):
                position += 1
                name = rng.choice(("Order Completed", "Product Viewed", "Signed In"))
                mine.append(
                    EventRecord(
                        position,
                        NOW - rng.randint(0, 60) * DAY,
                        "track",
                        name,
                        {"revenue": rng.randint(1, 200)},
                    )
                )
            events += len(mine)
            records.append(
                ProfileRecord(
                    f"p{number:08d}",
                    traits={"plan": rng.choice(("free", "pro", "team")), "age": rng.randint(18, 80)},
                    events=mine,
                    computed={"lifetime_value": rng.randint(0, 400)},
                )
            )
        with engine.begin() as connection:
            insert_profiles(connection, records)
    return events


def timed(engine: Engine, statement: Any, rounds: int = 3) -> tuple[float, Any]:
    """Best wall time of `rounds` runs, and the result."""
    best, found = float("inf"), None
    for _ in range(rounds):
        began = time.perf_counter()
        with engine.connect() as connection:
            found = connection.execute(statement).all()
        best = min(best, time.perf_counter() - began)
    return best, found


def best_of(call: Any, rounds: int = 3) -> tuple[float, Any]:
    """Best wall time of `rounds` calls, and the last result."""
    best, found = float("inf"), None
    for _ in range(rounds):
        began = time.perf_counter()
        found = call()
        best = min(best, time.perf_counter() - began)
    return best, found


def model_bytes(engine: Engine, path: Path | None) -> int:
    """The read model's size: the SQLite file (and its WAL), or the schema's relations on PostgreSQL."""
    if path is not None:
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB: VmHWM of /proc/self/status (getrusage's ru_maxrss
    would carry the parent's peak across the spawn's fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluation_memory(url: str, sender: Any) -> None:
    """In a fresh process: peak RSS after the imports and one connection, then after the count and a preview.

    A fresh process, because loading the population has already raised this one's peak far above what
    evaluating costs.
    """
    engine = create_read_model_engine(url)
    with engine.connect() as connection:
        connection.execute(select(func.count()).select_from(t.profiles)).all()
    before = peak_rss_mb()
    condition = parse_condition(AUDIENCE)
    with engine.connect() as connection:
        connection.execute(
            select(func.count()).select_from(sqlcompile.members(condition, NOW).subquery())
        ).all()
    Queries(engine).preview(condition, NOW, Definitions().condition, 10)
    engine.dispose()
    sender.send((before, peak_rss_mb()))


def measure_memory(url: str) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh process before and after evaluating the audience."""
    found: tuple[float, float] = wait_result(*in_child(evaluation_memory, url))
    return found


def run(url: str, profiles: int, path: Path | None, load: bool = True) -> None:
    engine = create_read_model_engine(url)
    if load:
        create_tables(t.metadata, engine)
        began = time.perf_counter()
        events = populate(engine, profiles)
        # What a running database has: statistics, and on PostgreSQL a visibility map (autovacuum's work).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
        loaded = time.perf_counter() - began
        print(f"\n{engine.dialect.name}: {profiles:,} profiles, {events:,} events loaded in {loaded:.1f} s")
    else:
        with engine.connect() as connection:
            profiles = connection.execute(select(func.count()).select_from(t.profiles)).scalar_one()
        print(f"\n{engine.dialect.name}: {profiles:,} profiles loaded by an earlier run")
    condition = parse_condition(AUDIENCE)
    members = sqlcompile.members(condition, NOW).subquery()
    baseline, _ = timed(engine, select(func.count()).select_from(t.profiles))
    counted, rows = timed(engine, select(func.count()).select_from(members))
    queries = Queries(engine)
    preview, (size, sample) = best_of(lambda: queries.preview(condition, NOW, Definitions().condition, 10))
    assert size == rows[0][0] and len(sample) == min(10, size)
    print(f"  baseline count(*) of profiles        {baseline:8.3f} s")
    print(
        f"  three-condition audience, counted    {counted:8.3f} s  ({counted / baseline:.0f}x baseline)"
        "   target < 5 s"
    )
    print(f"  PreviewAudience (size + 10 ids)      {preview:8.3f} s  members: {size:,}")
    for label, expression in SHAPES.items():
        shape = sqlcompile.members(parse_condition(expression), NOW).subquery()
        seconds, found = timed(engine, select(func.count()).select_from(shape), rounds=2)
        print(f"  {label:<37}{seconds:8.3f} s  members: {found[0][0]:,}")
    per_million = 1_000_000 / profiles
    print(
        f"  read model on disk                   {model_bytes(engine, path) * per_million / 2**20:8.0f} MB"
        " per million profiles"
    )
    before, after = measure_memory(url)
    print(
        f"  peak RSS of a process evaluating     {after:8.0f} MB at {profiles:,} profiles"
        f" ({after - before:.0f} MB more than before its first evaluation)"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgres")
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL database (a throwaway schema in it)")
    parser.add_argument(
        "--keep-schema",
        metavar="NAME",
        help="PostgreSQL: load into this schema and keep it, or reuse it when it holds profiles already",
    )
    parser.add_argument(
        "--keep-file",
        metavar="PATH",
        help="SQLite: load into this file and keep it, or reuse it when it exists",
    )
    args = parser.parse_args()
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    if "sqlite" in backends and args.keep_file:
        path = Path(args.keep_file)
        run(f"sqlite:///{path}", args.profiles, path, load=not path.exists())
    elif "sqlite" in backends:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "segments.db"
            run(f"sqlite:///{path}", args.profiles, path)
    if "postgres" in backends:
        import psycopg

        schema = args.keep_schema or f"bench_segments_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            found = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (schema, t.profiles.name),
            ).fetchone()
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}".encode())
        try:
            run(f"{args.postgres}?options=-csearch_path%3D{schema}", args.profiles, None, load=found is None)
        finally:
            if not args.keep_schema:
                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


if __name__ == "__main__":
    main()
