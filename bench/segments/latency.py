"""Event → membership change latency through the local cluster, at a steady event rate.

    .venv/bin/python -m bench.segments.latency [--rate 1000] [--seconds 30] [--event-store URL]

Brings the real cluster up (`Cluster.up`, as `make up` does) in a temporary data directory on free ports, defines
the audience `event("Order Completed").count(within 30d) >= 1` over gRPC and opens WatchMemberships on it. A
child process then posts Segment-style `/v1/batch` requests over HTTP at `--rate` events per second for
`--seconds`: each batch of 20 holds one "Order Completed" from a person never seen before (who qualifies) and 19
page views and tracks from a pool of returning people (who do not, but whose events the evaluator must still
follow). Latency is from the moment the qualifying event's HTTP request was sent to the moment its
`entered` change reaches the watching client: ingest → log → identity (attribution) → segments (evaluation) →
log → the watch stream. Profiles are matched to people afterwards through identity's GetProfile.

Baseline in the same run: the HTTP round trip of the same batches (what ingest's acknowledgement alone costs).
Target: p99 < 1 s at 1,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from bench.child import in_child, wait_result
from bench.idle import cluster_environ
from cdp.common.v1 import identity_pb2
from cdp.eventlog import EventFilter
from cdp.events.envelope import from_recorded
from cdp.events.identity import MessagesAttributed
from cdp.events.ingest import MessageCollected
from cdp.events.segments import MembershipChanged
from cdp.identity.v1 import identity_service_pb2 as identity_pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime import resources
from cdp.runtime.cluster import Cluster
from cdp.runtime.settings import DEV_WRITE_KEY, Settings
from cdp.segments.v1 import segments_service_pb2 as pb
from cdp.segments.v1 import segments_service_pb2_grpc

ADMIN = (("authorization", "Bearer dev-admin-token"),)
AUDIENCE = 'event("Order Completed").count(within 30d) >= 1'
BATCH = 20
RETURNING = 2_000
"""People the non-qualifying events are about."""


def noise(n: int, run: str) -> dict[str, Any]:
    """A page view or a track from a returning person: it never qualifies, but it is evaluated."""
    person = f"{run}-visitor-{n % RETURNING}"
    if n % 2:
        return {"type": "page", "userId": person, "name": "Pricing", "properties": {"path": "/pricing"}}
    return {"type": "track", "userId": person, "event": "Product Viewed", "properties": {"sku": f"s{n % 50}"}}


def load(port: int, rate: int, seconds: float, run: str, senders: int, out: Any) -> None:
    """Child process: post batches on an open-loop schedule; report each buyer's send time and the acks.

    Open loop: batch i is due at start + i / (rate / BATCH), whatever happened to the others; `senders`
    connections share the schedule (batch i goes on connection i % senders), as an SDK's many clients would, so
    one slow acknowledgement delays only its own connection. A late batch goes at once: a slow server shows as
    a lower achieved rate, never as a hidden pause in the schedule.
    """
    interval = BATCH / rate
    total = int(rate * seconds / BATCH)
    sent: dict[str, float] = {}
    acks: list[float] = []
    failures: list[int] = []
    started = time.monotonic() + 0.5

    def sender(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        auth = "Basic " + base64.b64encode(f"{DEV_WRITE_KEY}:".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": auth}
        for number in range(first, total, senders):
            buyer = f"{run}-buyer-{number}"
            messages = [noise(number * BATCH + k, run) for k in range(BATCH - 1)]
            order = {
                "type": "track",
                "userId": buyer,
                "event": "Order Completed",
                "properties": {"revenue": 9},
            }
            body = json.dumps({"batch": [*messages, order]}).encode()
            pause = started + number * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            began = time.time()
            connection.request("POST", "/v1/batch", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            acks.append(time.time() - began)
            if response.status == 200:
                sent[buyer] = began
            else:
                failures.append(response.status)
        connection.close()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    out.send((sent, acks, len(failures), total * BATCH / elapsed))


class Watcher:
    """WatchMemberships in a thread: when each profile's `entered` change reached this process."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        stub = segments_service_pb2_grpc.SegmentsServiceStub(self.channel)
        self.call = stub.WatchMemberships(pb.WatchMembershipsRequest(audience_ids=["buyers"]), metadata=ADMIN)
        self.ready.set()
        try:
            for change in self.call:
                if change.kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED:
                    self.arrived.setdefault(change.profile_id, time.time())
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise

    def stop(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]
        self.thread.join(10)
        self.channel.close()


def profiles_of(address: str, users: list[str]) -> dict[str, str]:
    """Profile id → user id, through identity's GetProfile."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(address) as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        for user in users:
            ref = identity_pb2.ProfileRef(
                identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user)
            )
            reply = stub.GetProfile(identity_pb.GetProfileRequest(profile=ref), metadata=ADMIN, timeout=30)
            found[reply.profile.profile_id] = user
    return found


async def hops(settings: Settings, buyers: dict[str, str]) -> dict[str, list[float]]:
    """Where the time goes, per qualifying message, from the log's `recorded_at`: ingest's append, identity's
    attribution, the evaluator's `MembershipChanged` (profile id → user id in `buyers`)."""
    store = resources.event_store(settings)
    wanted = EventFilter(event_types=("MessageCollected", "MessagesAttributed", "MembershipChanged"))
    collected: dict[int, float] = {}
    attributed: dict[str, float] = {}
    changed: dict[str, float] = {}
    after = 0
    try:
        while batch := await store.read_all(after, limit=5_000, filter=wanted):
            after = batch[-1].global_position
            for recorded in batch:
                event = from_recorded(recorded)
                at = recorded.recorded_at.timestamp()
                if isinstance(event, MessageCollected) and event.event_name == "Order Completed":
                    collected[recorded.global_position] = at
                elif isinstance(event, MessagesAttributed):
                    for entry in event.entries():
                        if entry.position in collected:
                            attributed.setdefault(entry.profile_id, at)
                            attributed.setdefault("@" + entry.profile_id, collected[entry.position])
                elif isinstance(event, MembershipChanged) and event.entered:
                    changed.setdefault(event.profile_id, at)
    finally:
        await store.close()
    found: dict[str, list[float]] = {"identity": [], "segments": []}
    for profile in buyers:
        if profile in attributed and profile in changed:
            found["identity"].append(attributed[profile] - attributed["@" + profile])
            found["segments"].append(changed[profile] - attributed[profile])
    return found


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of the sorted values fall (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def wait_for(condition: Any, timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cdp-latency-") as folder:
        env = cluster_environ(Path(folder) / "data", args.event_store)
        cluster = Cluster(Settings.from_env(env), env)
        cluster.up(timeout=120)
        segments = f"127.0.0.1:{env['CDP_SEGMENTS_PORT']}"
        try:
            with grpc.insecure_channel(segments) as channel:
                stub = segments_service_pb2_grpc.SegmentsServiceStub(channel)
                audience = pb.Audience(audience_id="buyers", display_name="Buyers", expression=AUDIENCE)
                stub.CreateAudience(pb.CreateAudienceRequest(audience=audience), metadata=ADMIN, timeout=60)
            watcher = Watcher(segments)
            watcher.ready.wait(30)
            time.sleep(1)  # the stream's first read sets its position: it must be open before the load
            run_id = uuid.uuid4().hex[:6]
            child = in_child(load, int(env["CDP_HTTP_PORT"]), args.rate, args.seconds, run_id, args.senders)
            sent, acks, failures, achieved = wait_result(*child)
            complete = wait_for(lambda: len(watcher.arrived) >= len(sent), timeout=120)
            watcher.stop()
            users = profiles_of(f"127.0.0.1:{env['CDP_IDENTITY_PORT']}", sorted(sent))
        finally:
            cluster.down()
        spent = asyncio.run(hops(Settings.from_env(env), users))
    pairs = sorted((sent[u], watcher.arrived[p] - sent[u]) for p, u in users.items() if p in watcher.arrived)
    latencies = [latency for _, latency in pairs]
    print(f"\nevent → membership change through the local cluster ({args.event_store or 'SQLite log'})")
    print(f"  load: {achieved:,.0f} events/s achieved of {args.rate:,} asked, for {args.seconds:.0f} s;")
    print(f"        {len(sent):,} qualifying events, {failures} batches refused")
    if not complete:
        print(
            f"  only {len(watcher.arrived):,} of {len(sent):,} entries arrived within 120 s of the load's end"
        )
    if not latencies:
        print("  no membership change arrived")
        return 1
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    ack50, ack99 = statistics.median(acks), percentile(acks, 0.99)
    print(f"  baseline HTTP ack of a batch   p50 {ack50 * 1000:7.1f} ms   p99 {ack99 * 1000:7.1f} ms")
    print(
        f"  event → entered (watch)        p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"
        f"   max {max(latencies) * 1000:7.1f} ms   target p99 < 1000 ms"
    )
    for hop, label in (("identity", "appended → attributed"), ("segments", "attributed → MembershipChanged")):
        if spent[hop]:
            print(
                f"    {label:<29}p50 {statistics.median(spent[hop]) * 1000:7.1f} ms"
                f"   p99 {percentile(spent[hop], 0.99) * 1000:7.1f} ms"
            )
    if args.timeline and pairs:
        first = pairs[0][0]
        print("  by second of the load: p50 / max ms")
        for second in range(int(pairs[-1][0] - first) + 1):
            slice_ = [latency for at, latency in pairs if second <= at - first < second + 1]
            if slice_:
                print(
                    f"    {second:3d} s  {statistics.median(slice_) * 1000:7.0f}  {max(slice_) * 1000:7.0f}"
                )
    print(f"  ratio to the ack               p50 {p50 / ack50:7.1f}x     p99 {p99 / ack99:7.1f}x")
    return 0 if complete and p99 < 1.0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.segments.latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument("--timeline", action="store_true", help="latencies by second of the load")
    parser.add_argument("--senders", type=int, default=4, help="HTTP connections sharing the schedule")
    parser.add_argument(
        "--event-store", default=None, help="CDP_EVENT_STORE (default: SQLite in the temp dir)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
