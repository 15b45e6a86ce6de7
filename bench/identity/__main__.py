"""Identity benchmark: resolver throughput, GetProfile latency over gRPC, memory per million identifiers.

    .venv/bin/python -m bench.identity                      # 10k people, ~100k messages (a few minutes)
    .venv/bin/python -m bench.identity --full               # 100k people, ~1M messages (the issue's size)
    .venv/bin/python -m bench.identity --people 2000 --profile   # cProfile of the resolver's worker calls

Messages are appended first (through the event-log port, sealed with the keyring, exactly as ingest does),
then the resolver catches up from an empty read model: every message is decrypted, its identifiers hashed,
resolved, decisions appended to the log and the read model written in batches.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import random
import statistics
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy.orm import Session

from bench.identity.data import Message, person, phone_pool
from cdp.common.v1 import identity_pb2
from cdp.eventlog import EventStore, NewEvent
from cdp.events import EventMetadata
from cdp.events.ingest import MessageCollected, seal_payload
from cdp.events.streams import attribution_stream, subject_stream
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.keyring import Keyring, SubjectIds
from cdp.runtime import resources
from cdp.runtime.logging import configure_logging
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.identity.main import build
from services.identity.readmodel import load_state
from services.identity.resolver import Resolver

ADMIN = (("authorization", "Bearer dev-admin-token"),)


async def load_log(store: EventStore, keyring: Keyring, ids: SubjectIds, people: int, seed: int) -> int:
    """Append every person's messages, one append per run of messages to the same subject stream."""
    rng = random.Random(seed)
    phones = phone_pool(max(10, people // 20), rng)
    count = 0
    for index in range(people):
        runs: list[tuple[str, list[NewEvent]]] = []
        messages = list(person(index, rng, phones))
        subjects = [_subject(ids, m) for m in messages]
        await keyring.prefetch(set(subjects))
        for message, subject in zip(messages, subjects, strict=True):
            event = _collected(keyring, ids, message, subject).to_new_event(
                EventMetadata(actor="source:bench")
            )
            stream = subject_stream(subject)
            if not runs or runs[-1][0] != stream:
                runs.append((stream, []))
            runs[-1][1].append(event)
        for stream, events in runs:
            await store.append(stream, events)
        count += len(messages)
    return count


def _subject(ids: SubjectIds, message: Message) -> str:
    user = message.personal.get("userId")
    return ids("user_id", user) if user else ids("anonymous_id", message.personal["anonymousId"])


def _collected(keyring: Keyring, ids: SubjectIds, message: Message, subject: str) -> MessageCollected:
    identifiers = {
        t: ids(t, v)
        for t, k in (("user_id", "userId"), ("anonymous_id", "anonymousId"))
        if (v := message.personal.get(k))
    }
    return MessageCollected(
        message_id=str(uuid.uuid4()),
        message_type=message.type,
        source_id=message.source,
        subject_id=subject,
        event_name=message.event if message.type in ("track", "screen", "page") else None,
        timestamp=message.at,
        received_at=datetime.now(UTC),
        identifiers=identifiers,
        payload=seal_payload(keyring, subject, message.personal),
    )


async def resolve_all(resolver: Resolver, profile: bool) -> tuple[float, float, float]:
    """Wall and CPU seconds the resolver takes to catch up with the log, and the CPU of its worker process.

    CPU counts all threads of this process plus the worker process that opens pages ahead (`prepare`).
    """
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        _profile_worker_calls(resolver, profiler)
    cpu, children, started = time.process_time(), _children_cpu(), time.perf_counter()
    await resolver.catch_up()
    wall = time.perf_counter() - started
    for _ in range(100):  # the worker exits once catch-up is over; its CPU counts when it is reaped
        if not multiprocessing.active_children():
            break
        await asyncio.sleep(0.05)
    worker = _children_cpu() - children
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return wall, time.process_time() - cpu + worker, worker


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def _profile_worker_calls(resolver: Resolver, profiler: cProfile.Profile) -> None:
    """The resolver's CPU work runs in worker threads, which a profiler of the main thread never sees: the
    resolution's `decide` (deciding, histories, the rows written) is profiled where it runs."""
    policy = resolver.resolution
    for name in ("decide",):
        method = getattr(policy, name)

        def profiled(*args: Any, _method: Any = method) -> Any:
            profiler.enable()
            try:
                return _method(*args)
            finally:
                profiler.disable()

        setattr(policy, name, profiled)


async def lookups(settings: Settings, people: int, count: int, as_of: int) -> tuple[list[float], list[float]]:
    """GetProfile latencies (ms) by e-mail over gRPC, against the identity server on loopback; and seconds
    per GetProfile `as_of` now (which replays the log's decisions and opens the profile's messages)."""
    app = await build(settings)
    server = GrpcServer(app, settings, port=0)
    await server.start()
    rng = random.Random(7)
    latencies: list[float] = []
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
            for n in range(count + 20):
                email = f"person.{rng.randrange(people)}@example.com"
                ref = identity_pb2.ProfileRef(
                    identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_EMAIL, value=email)
                )
                started = time.perf_counter()
                await stub.GetProfile(pb.GetProfileRequest(profile=ref), metadata=ADMIN)
                if n >= 20:  # the first calls warm the channel and the database pages
                    latencies.append((time.perf_counter() - started) * 1000)
            replays: list[float] = []
            for _ in range(as_of):
                moment = timestamp_pb2.Timestamp()
                moment.GetCurrentTime()
                started = time.perf_counter()
                request = pb.GetProfileRequest(profile=ref, as_of=moment)
                await stub.GetProfile(request, metadata=ADMIN, timeout=3600)
                replays.append(time.perf_counter() - started)
    finally:
        await server.stop()
    return latencies, replays


def memory_per_million(settings: Settings) -> tuple[int, float]:
    """Identifiers in the graph, and MB of Python heap the resolver's state takes per million of them."""
    engine = resources.read_model_engine(settings, "identity")
    tracemalloc.start()
    with Session(engine) as session:
        state = load_state(session)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    engine.dispose()
    identifiers = len(state.graph.links)
    return identifiers, size / identifiers * 1_000_000 / 1e6


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-identity-") as directory:
        settings = replace(
            Settings.from_env({"CDP_DATA_DIR": directory}), log_level="warning", grace_seconds=0.5
        )
        store, keyring, ids = (
            resources.event_store(settings),
            resources.keyring(settings),
            resources.subject_ids(settings),
        )
        engine = resources.read_model_engine(settings, "identity")
        started = time.perf_counter()
        messages = await load_log(store, keyring, ids, args.people, args.seed)
        print(
            f"log loaded: {messages:,} messages for {args.people:,} people in {time.perf_counter() - started:.1f} s"
        )
        resolver = Resolver(store, keyring, ids, engine, batch_size=args.batch)
        seconds, cpu, worker = await resolve_all(resolver, args.profile)
        attributed = len(await store.read_stream(attribution_stream()))
        decisions = await store.head_position() + 1 - messages - attributed
        print(
            f"resolver: {messages:,} messages, {decisions:,} decisions and {attributed} profile-stream batches "
            f"appended, in {seconds:.1f} s wall = "
            f"{messages / seconds:,.0f} messages/s; {cpu:.1f} s CPU ({worker:.1f} s of it in the worker "
            f"process) = {messages / cpu:,.0f} messages per CPU second"
        )
        await store.close()
        keyring.close()
        engine.dispose()
        latencies, replays = await lookups(settings, args.people, args.lookups, args.as_of)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"GetProfile over gRPC by e-mail: p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms ({len(latencies)} calls)"
        )
        if replays:
            print(
                f"GetProfile as_of (replays the log's decisions, opens the profile's messages): median {statistics.median(replays):.1f} s"
                f" ({len(replays)} calls)"
            )
        identifiers, mb = memory_per_million(settings)
        print(
            f"resolver state: {identifiers:,} identifiers, {mb:,.0f} MB per million identifiers (tracemalloc)"
        )
        size = await asyncio.to_thread(lambda: Path(directory, "identity.db").stat().st_size)
        print(f"read model file: {size / 1e6:,.0f} MB")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=10_000, help="people (about 10 messages each)")
    parser.add_argument("--full", action="store_true", help="100k people, about 1M messages")
    parser.add_argument("--batch", type=int, default=2000, help="resolver batch size")
    parser.add_argument("--lookups", type=int, default=1000, help="GetProfile calls to time")
    parser.add_argument("--as-of", type=int, default=3, help="GetProfile as_of calls to time (0: none)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the resolver")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.full:
        args.people = 100_000
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
