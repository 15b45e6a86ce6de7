"""Governance: time to erase one person in a log of 1M events (target < 5 s), and an access export's time.

    .venv/bin/python -m bench.governance                          # both phases, full sizes, SQLite and PostgreSQL
    .venv/bin/python -m bench.governance --phase log --events 50000 --backends sqlite
    .venv/bin/python -m bench.governance --phase cluster --people 200
    .venv/bin/python -m bench.governance --phase cluster --event-store postgresql://postgres@127.0.0.1:5432/test?schema=g

Phase `log` (per backend: a SQLite file in a temporary directory, a throwaway PostgreSQL schema). The log is
filled as the platform fills it, with `append_many` in chunks of 5,000: people in cohorts of 1,000 who are active
at the same time, 20 messages each (`MessageCollected` in `subject-<id>`, personal fields sealed with a real
keyring: a temporary SQLite keyring under a generated master key; the first three under the anonymous id, then
an identify with traits and page views and tracks under the user id), identity's `IdentifierLinked` in
`profile-<id>` (anonymous id, then user id and e-mail), its `MessagesAttributed` batches in
`attribution-identity` (1,000 messages each, so a person appears in about 20 shared batches), and a
`ConsentChanged` from one person in ten. The load's time is printed. Then people at 50 %, 25 % and 75 % of the
log are erased one after another: an `ErasureRequested` (their three subject ids and their profile id) appended
to `dsr-<id>` and carried out by the real `RequestWorker.carry_out` (keys shredded, `SubjectErased` announced,
the log scanned with `events_naming`, their streams deleted, their entries cut out of the shared batches, the
log's files reclaimed, the receipt); each erasure is timed as a whole (from the append to the receipt) and per
step (from the steps' `completed_at`). No service holds read models in this phase, so the worker waits for no
purge confirmation (`purgers=()`). An access export for another person is carried out by the same worker; its
profile reader answers None, so the export's profile part is empty. Baseline in the same run: one `read_all`
pass over the whole log in pages of 5,000, so each erasure is also a ratio of a full read.

Phase `cluster` (what `make up` runs: `Cluster.up` in a temporary data directory on free ports, SQLite log by
default, `--event-store` for another). `--people` people x 10 messages over HTTP `/v1/batch` (a page view,
an identify with e-mail, name and phone, page views and tracks); once identity's GetProfile knows the last
person, RequestAccess for `--requests` people and RequestErasure for as many others through governance's gRPC,
each timed from the call to state COMPLETED on GetRequest (polled every 20 ms): p50 and max, and each erasure's
receipt (its `seconds`, the time between its steps). An erasure here waits for ingest's, identity's and
segments' purge confirmations. Baseline in the same run: identity's GetProfile round trip. The cluster is brought
down at the end, also on failure.

Timings are printed beside their targets and never asserted. A phase that fails is reported and the others still
run; the exit status is 1 only if a phase failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from bench.governance import cluster, log

POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.governance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phase", choices=("log", "cluster", "all"), default="all")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (phase log)")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="phase log: comma-separated sqlite, postgres"
    )
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL database (a throwaway schema in it)")
    parser.add_argument("--erasures", type=int, default=3, help="people erased one after another (phase log)")
    parser.add_argument("--people", type=int, default=2_000, help="people sent over HTTP (phase cluster)")
    parser.add_argument(
        "--requests", type=int, default=3, help="access and erasure requests each (phase cluster)"
    )
    parser.add_argument("--event-store", default=None, help="phase cluster: CDP_EVENT_STORE (default SQLite)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed: list[str] = []
    if args.phase in ("log", "all"):
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        failed += [f"log ({b})" for b in log.run(args.events, backends, args.postgres, args.erasures)]
    if args.phase in ("cluster", "all"):
        try:
            cluster.run(args.people, args.requests, args.event_store)
        except Exception as error:
            traceback.print_exc()
            print(f"\nphase cluster FAILED: {type(error).__name__}: {error}")
            failed.append("cluster")
    if failed:
        print(f"\nfailed phases: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
