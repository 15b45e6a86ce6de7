"""Erasure's physical removals on a log of N events: events_naming, erase_events, delete_stream, reclaim.

    .venv/bin/python -m bench.eventlog.naming                       # 1M events, SQLite
    .venv/bin/python -m bench.eventlog.naming --postgres postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.eventlog.naming --events 100000 --terms 4,16

Bodies are ~500-byte JSON messages naming a subject id (32 hex) and a profile id (UUID) each, like ingest's
collected messages; one person has a stream of ~30 events and is named in ~30 events of a shared stream.
Figures, not asserts: the issue's target is under 5 s for erasing one person in 1M events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from cdp.eventlog import EventStore, NewEvent, StreamAppend
from cdp.eventlog.postgres import PostgresEventStore
from cdp.eventlog.sqlite import SQLiteEventStore

TARGET_SECONDS = 5.0


def body(subject: str, profile: str, i: int) -> bytes:
    """A collected message of ~500 bytes: ids in the clear, personal fields as ciphertext."""
    cipher = os.urandom(96).hex()
    return (
        f'{{"messageId":"{uuid.uuid4()}","subject":"{subject}","profile":"{profile}","type":"track",'
        f'"event":"Order Completed","properties":{{"revenue":42.5,"currency":"EUR","sku":"SKU-{i}"}},'
        f'"context":{{"ip":"enc:{cipher}","userAgent":"Mozilla/5.0"}},"sentAt":"2026-05-09T07:35:25Z"}}'
    ).encode()


async def load(store: EventStore, count: int, person: tuple[str, str]) -> None:
    """`count` events over 10,000 streams, the person's 20 own events and 10 shared mentions among them."""
    subject, profile = person
    batch: list[StreamAppend] = []
    for i in range(count - 30):
        other = uuid.uuid4().hex
        batch.append(
            StreamAppend(
                f"message-{i % 10_000}", [NewEvent("MessageCollected", body(other, str(uuid.uuid4()), i))]
            )
        )
        if i % (count // 30) == 0 and i:
            who = subject if i % 2 else profile
            mention = f'{{"members":["{who}","{uuid.uuid4()}"]}}'.encode()
            batch.append(StreamAppend("audience-1", [NewEvent("MembersListed", mention)]))
            batch.append(
                StreamAppend(f"subject-{subject}", [NewEvent("MessageCollected", body(subject, profile, i))])
            )
        if len(batch) >= 2500:
            await store.append_many(batch)
            batch = []
    if batch:
        await store.append_many(batch)


async def timed(label: str, work: asyncio.Future[object] | object) -> float:
    """Await `work`, print and return its seconds."""
    started = time.perf_counter()
    result = await work  # type: ignore[misc]
    seconds = time.perf_counter() - started
    print(f"  {label:<34} {seconds:7.2f} s   {result if not isinstance(result, list) else len(result)}")
    return seconds


async def erase_one(store: EventStore, person: tuple[str, str], terms: int) -> None:
    """The physical part of one erasure, timed step by step."""
    subject, profile = person
    extra = [uuid.uuid4().hex for _ in range(terms - 2)]
    started = time.perf_counter()
    naming = await store.events_naming([subject, profile, *extra], skip_categories=["consent"])
    found = time.perf_counter() - started
    print(f"  events_naming ({terms} terms)            {found:7.2f} s   {len(naming)} events")
    changes: dict[uuid.UUID, bytes | None] = {
        e.id: e.data.replace(subject.encode(), b"").replace(profile.encode(), b"")
        for e in naming
        if not e.stream.startswith("subject-")
    }
    total = found
    total += await timed("delete_stream", store.delete_stream(f"subject-{subject}"))
    total += await timed("erase_events", store.erase_events(changes))
    total += await timed("reclaim", store.reclaim())
    print(f"  total {total:.2f} s (target < {TARGET_SECONDS:.0f} s)")


async def run(store: EventStore, label: str, events: int, terms: list[int]) -> None:
    """Load the log, then erase a person once per term count (a fresh person each time)."""
    people = [(uuid.uuid4().hex, str(uuid.uuid4())) for _ in terms]
    started = time.perf_counter()
    for person in people:
        await load(store, events // len(people), person)
    print(f"{label}: loaded {events:,} events in {time.perf_counter() - started:.0f} s")
    for person, count in zip(people, terms, strict=True):
        await erase_one(store, person, count)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--terms", default="4,16", help="terms per events_naming call, one erasure each")
    parser.add_argument("--postgres", default="skip", help="a PostgreSQL URL, or skip")
    args = parser.parse_args()
    terms = [int(t) for t in args.terms.split(",")]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", ".")) as folder:
        path = Path(folder) / "events.db"
        sqlite = SQLiteEventStore(str(path))
        try:
            await run(sqlite, "SQLite", args.events, terms)
            print(f"  file {path.stat().st_size / 1e6:.0f} MB")
        finally:
            await sqlite.close()
    if args.postgres != "skip":
        schema = f"bench_naming_{uuid.uuid4().hex[:8]}"
        postgres = PostgresEventStore.from_url(f"{args.postgres}?schema={schema}")
        try:
            await run(postgres, "PostgreSQL", args.events, terms)
        finally:
            await postgres.drop_schema()
            await postgres.close()


if __name__ == "__main__":
    asyncio.run(main())
