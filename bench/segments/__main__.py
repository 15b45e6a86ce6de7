"""Bulk evaluation over N profiles: the three-condition audience of the segments issue, counted and previewed.

    .venv/bin/python -m bench.segments [--profiles 1000000] [--postgres URL]

It fills a segments read model (SQLite file, or a PostgreSQL schema) with synthetic profiles through the same
loader the tests use, then times `count(members(...))` and a preview (size + a sample of 10) of
`traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 and trait("lifetime_value") > 100`
compiled by `services.segments.sqlcompile` — what PreviewAudience and a definition's recompute run. Baseline in the
same run: a plain `SELECT count(*)` over the profiles table, so the ratio says what the conditions cost.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select, text

from cdp.sqlengine import create_read_model_engine, create_tables
from services.segments import sqlcompile
from services.segments import tables as t
from services.segments.domain.language import parse_condition
from services.segments.domain.times import DAY, SECOND
from services.segments.loading import EventRecord, ProfileRecord, insert_profiles

AUDIENCE = 'traits.plan = "pro" and event("Order Completed").count(within 30d) >= 2 and trait("lifetime_value") > 100'
NOW = 1_790_000_000 * SECOND
CHUNK = 20_000


def populate(engine: object, profiles: int, seed: int = 7) -> int:
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
        with engine.begin() as connection:  # type: ignore[attr-defined]
            insert_profiles(connection, records)
    return events


def timed(engine: object, statement: object, rounds: int = 3) -> tuple[float, object]:
    """Best wall time of `rounds` runs, and the result."""
    best, found = float("inf"), None
    for _ in range(rounds):
        began = time.perf_counter()
        with engine.connect() as connection:  # type: ignore[attr-defined]
            found = connection.execute(statement).all()
        best = min(best, time.perf_counter() - began)
    return best, found


def run(url: str, profiles: int) -> None:
    engine = create_read_model_engine(url)
    create_tables(t.metadata, engine)
    began = time.perf_counter()
    events = populate(engine, profiles)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text("ANALYZE"))
        else:
            connection.execute(text("ANALYZE"))
    print(
        f"{engine.dialect.name}: {profiles:,} profiles, {events:,} events loaded in {time.perf_counter() - began:.1f} s"
    )
    condition = parse_condition(AUDIENCE)
    members = sqlcompile.members(condition, NOW).subquery()
    baseline, _ = timed(engine, select(func.count()).select_from(t.profiles))
    counted, rows = timed(engine, select(func.count()).select_from(members))
    preview, _ = timed(engine, select(members.c.profile_id).order_by(members.c.profile_id).limit(10))
    size = rows[0][0]  # type: ignore[index]
    print(f"  baseline count(*) of profiles      {baseline:8.3f} s")
    print(
        f"  three-condition audience, counted  {counted:8.3f} s  ({counted / baseline:.0f}x baseline; target < 5 s)"
    )
    print(f"  preview (size query + 10 ids)      {counted + preview:8.3f} s  members: {size:,}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="also run on this PostgreSQL database (a throwaway schema in it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        run(f"sqlite:///{Path(directory) / 'segments.db'}", args.profiles)
    if args.postgres:
        import psycopg

        schema = f"bench_segments_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        try:
            run(f"{args.postgres}?options=-csearch_path%3D{schema}", args.profiles)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE".encode())


if __name__ == "__main__":
    main()
