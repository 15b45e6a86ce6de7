"""CSV onboarding throughput and memory: a generated file streamed over gRPC into a real ingest server.

    .venv/bin/python -m bench.ingest.csv_onboarding --rows 100000 [--tracemalloc] [--batch 500]

Prints rows/s, the process's peak RSS growth, and (with --tracemalloc, which slows Python down) the peak of
Python allocations during the import. Also prints the tracking-plan check cost per message.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from cdp.runtime.logging import configure_logging
from services.ingest import configuration
from services.ingest.domain.messages import parse_message
from services.ingest.domain.plans import Verdict
from services.ingest.domain.tracking_plans import Enforcement, PlanBook, PlannedEvent, TrackingPlan
from tests.integration.ingest.conftest import WRITE_KEY, running_ingest, settings_for
from tests.integration.ingest.test_csv_import import define_catalog, generated, header, requests


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def import_rows(rows: int, trace: bool) -> None:
    """Import `rows` generated rows into a fresh server and print the figures."""
    with tempfile.TemporaryDirectory() as folder:
        async with running_ingest(settings_for(Path(folder))) as ingest:
            await define_catalog(ingest)
            rss_before = _rss_mib()
            if trace:
                tracemalloc.start()
            started = time.perf_counter()
            reply = await ingest.stub.ImportCsv(requests(header(), generated(rows)), metadata=WRITE_KEY)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
            tracemalloc.stop()
    print(f"rows: {reply.rows_read} read, {reply.rows_imported} imported, {reply.rows_rejected} rejected")
    print(f"time: {seconds:.1f} s, {reply.rows_imported / seconds:.0f} rows/s")
    print(f"peak RSS: {_rss_mib():.0f} MiB (before the import: {rss_before:.0f} MiB)")
    if trace:
        print(f"tracemalloc peak during the import: {peak / 2**20:.1f} MiB")


def plan_check_cost(rounds: int = 20000) -> None:
    """Microseconds per `PlanBook.check` for a planned track that passes, fails, and is omitted from."""
    schema = {
        "type": "object",
        "properties": {"revenue": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD"]}},
        "required": ["revenue", "currency"],
    }
    book = PlanBook()
    plan = TrackingPlan(
        "bench",
        events=(PlannedEvent("track", "Order Completed", schema),),
        sources=(Enforcement("web", Verdict.BLOCK, Verdict.FLAG, True),),
        version=1,
    )
    book.install(plan)
    now = datetime.now(UTC)
    cases = {
        "valid": {"revenue": 12.5, "currency": "EUR"},
        "invalid (2 violations)": {"revenue": -1, "currency": "GBP"},
        "valid + 1 omitted": {"revenue": 1, "currency": "USD", "coupon": "X"},
    }
    for name, properties in cases.items():
        raw = {
            "type": "track",
            "userId": "u",
            "event": "Order Completed",
            "messageId": "m",
            "properties": properties,
        }
        message = parse_message(raw, received_at=now)
        started = time.perf_counter()
        for _ in range(rounds):
            book.check("web", message)
        print(f"plan check, {name}: {(time.perf_counter() - started) / rounds * 1e6:.1f} µs")


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=configuration.CSV_BATCH)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    configure_logging("warning")
    configuration.CSV_BATCH = args.batch
    plan_check_cost()
    asyncio.run(import_rows(args.rows, args.tracemalloc))


if __name__ == "__main__":
    main()
