"""Phase `cluster`: access and erasure requests through governance's gRPC on the cluster `make up` runs.

People are sent over HTTP `/v1/batch` as a website would send them; once identity knows the last of them,
RequestAccess and RequestErasure are called for a few people each, and each request is timed from the call to
state COMPLETED on GetRequest (polled every 20 ms). An erasure here waits for the purge confirmations of
ingest, identity and segments, as it does in production.
"""

from __future__ import annotations

import base64
import http.client
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from bench.idle import cluster_environ
from cdp.common.v1 import identity_pb2
from cdp.governance.v1 import governance_service_pb2 as gov
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.identity.v1 import identity_service_pb2 as identity_pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime.cluster import Cluster
from cdp.runtime.settings import DEV_WRITE_KEY, Settings

ADMIN = (("authorization", "Bearer dev-admin-token"),)
MESSAGES_PER_PERSON = 10
PEOPLE_PER_BATCH = 50
"""500 messages per `/v1/batch` request (Segment allows 2,500)."""
POLL_SECONDS = 0.02
REQUEST_TIMEOUT = 120.0
"""A request not COMPLETED this long after its call is reported as such."""
BASELINE_ROUNDS = 50


def user_id(run: str, number: int) -> str:
    return f"{run}-user-{number}"


def messages(run: str, number: int) -> list[dict[str, Any]]:
    """One person's ten messages: an anonymous page view, an identify with traits, then page views and tracks."""
    user, anonymous = user_id(run, number), f"{run}-anon-{number}"
    found: list[dict[str, Any]] = [
        {"type": "page", "anonymousId": anonymous, "name": "Home", "properties": {"path": "/"}},
        {
            "type": "identify",
            "anonymousId": anonymous,
            "userId": user,
            "traits": {
                "email": f"{user}@example.com",
                "name": f"Person {number}",
                "phone": f"+4420{number:08d}",
            },
        },
    ]
    for k in range(MESSAGES_PER_PERSON - 2):
        if k % 2:
            found.append(
                {"type": "page", "userId": user, "name": "Pricing", "properties": {"path": "/pricing"}}
            )
        else:
            found.append(
                {"type": "track", "userId": user, "event": "Product Viewed", "properties": {"sku": f"s{k}"}}
            )
    return found


def send_people(port: int, run: str, people: int) -> tuple[list[float], int]:
    """Post every person's messages; the HTTP acks' seconds and the batches refused."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    auth = "Basic " + base64.b64encode(f"{DEV_WRITE_KEY}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": auth}
    acks: list[float] = []
    refused = 0
    try:
        for first in range(0, people, PEOPLE_PER_BATCH):
            batch = [m for n in range(first, min(first + PEOPLE_PER_BATCH, people)) for m in messages(run, n)]
            began = time.perf_counter()
            connection.request(
                "POST", "/v1/batch", body=json.dumps({"batch": batch}).encode(), headers=headers
            )
            response = connection.getresponse()
            response.read()
            acks.append(time.perf_counter() - began)
            refused += response.status != 200
    finally:
        connection.close()
    return acks, refused


def by_user(run: str, number: int) -> identity_pb2.ProfileRef:
    identifier = identity_pb2.Identifier(
        type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user_id(run, number)
    )
    return identity_pb2.ProfileRef(identifier=identifier)


def wait_for_profile(stub: Any, ref: identity_pb2.ProfileRef, timeout: float) -> float | None:
    """Seconds until identity answers GetProfile for `ref` (None: not within `timeout`)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        try:
            stub.GetProfile(identity_pb.GetProfileRequest(profile=ref), metadata=ADMIN, timeout=10)
            return time.perf_counter() - began
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        time.sleep(0.1)
    return None


def profile_round_trips(stub: Any, ref: identity_pb2.ProfileRef) -> list[float]:
    """The baseline: GetProfile round trips of a known person."""
    spent = []
    for _ in range(BASELINE_ROUNDS):
        began = time.perf_counter()
        stub.GetProfile(identity_pb.GetProfileRequest(profile=ref), metadata=ADMIN, timeout=10)
        spent.append(time.perf_counter() - began)
    return spent


def until_completed(stub: Any, method: Callable[..., Any], message: Any) -> tuple[float, Any]:
    """Call `method(message)` (RequestAccess/RequestErasure), then poll GetRequest until COMPLETED; seconds
    (from before the call) and the last request seen."""
    began = time.perf_counter()
    request = method(message, metadata=ADMIN, timeout=30).request
    while time.perf_counter() - began < REQUEST_TIMEOUT:
        reply = stub.GetRequest(
            gov.GetRequestRequest(request_id=request.request_id), metadata=ADMIN, timeout=30
        )
        request = reply.request
        if request.state == gov.REQUEST_STATE_COMPLETED:
            return time.perf_counter() - began, request
        time.sleep(POLL_SECONDS)
    return float("nan"), request


def summary(values: list[float]) -> str:
    done = [v for v in values if v == v]
    if not done:
        return "none completed"
    return f"p50 {statistics.median(done) * 1000:8.1f} ms   max {max(done) * 1000:8.1f} ms   ({len(done)} requests)"


def print_receipt(request: Any) -> None:
    """The receipt's figures, and the time each step took after the one before (the first: after the request
    was received)."""
    receipt = json_format.MessageToDict(request.receipt)
    steps = receipt.get("steps", {})
    moments = sorted((v.get("completed_at") or "", k) for k, v in steps.items())
    parts = []
    before = request.create_time.ToDatetime(tzinfo=UTC).timestamp()
    for at, name in moments:
        if at:
            when = datetime.fromisoformat(at).timestamp()
            parts.append(f"{name} +{(when - before) * 1000:.0f} ms")
            before = when
    purged = ", ".join(f"{k} {int(v)}" for k, v in sorted(receipt.get("purged", {}).items()))
    print(
        f"      receipt seconds {receipt.get('seconds')}: {int(receipt.get('events_deleted', 0))} events deleted,"
        f" {int(receipt.get('events_redacted', 0))} redacted; rows purged: {purged}"
    )
    if parts:
        print("        " + ", ".join(parts))


def run(people: int, requests: int, event_store: str | None) -> None:
    """The phase: cluster up, people in, access and erasure requests timed, cluster down (even on failure)."""
    run_id = f"g{int(time.time()) % 100000}"
    with tempfile.TemporaryDirectory(prefix="cdp-bench-governance-") as folder:
        env = cluster_environ(Path(folder) / "data", event_store)
        cluster = Cluster(Settings.from_env(env), env)
        try:
            cluster.up(timeout=120)
            measure(env, run_id, people, requests, event_store)
        finally:
            cluster.down()


def measure(env: dict[str, str], run: str, people: int, requests: int, event_store: str | None) -> None:
    print(
        f"\ncluster ({event_store or 'SQLite log'}): {people:,} people x {MESSAGES_PER_PERSON} messages over HTTP"
    )
    began = time.perf_counter()
    acks, refused = send_people(int(env["CDP_HTTP_PORT"]), run, people)
    sent = time.perf_counter() - began
    print(
        f"  sent in {sent:.1f} s ({people * MESSAGES_PER_PERSON / sent:,.0f} messages/s), {refused} batches refused;"
        f" HTTP ack of a {PEOPLE_PER_BATCH * MESSAGES_PER_PERSON}-message batch p50 {statistics.median(acks) * 1000:.1f} ms"
    )
    identity = grpc.insecure_channel(f"127.0.0.1:{env['CDP_IDENTITY_PORT']}")
    governance = grpc.insecure_channel(f"127.0.0.1:{env['CDP_GOVERNANCE_PORT']}")
    try:
        ids = identity_service_pb2_grpc.IdentityServiceStub(identity)
        waited = wait_for_profile(ids, by_user(run, people - 1), timeout=600)
        if waited is None:
            raise RuntimeError("identity did not know the last person within 600 s of the load's end")
        print(f"  identity knew the last person {waited:.1f} s after the load's end")
        baseline = profile_round_trips(ids, by_user(run, 0))
        base50 = statistics.median(baseline)
        print(
            f"  baseline GetProfile round trip      p50 {base50 * 1000:8.1f} ms   max {max(baseline) * 1000:8.1f} ms"
        )
        stub = governance_service_pb2_grpc.GovernanceServiceStub(governance)
        access, erasure, receipts = [], [], []
        for k in range(requests):
            ref = by_user(run, (k * 7 + 1) % people)
            seconds, _ = until_completed(stub, stub.RequestAccess, gov.RequestAccessRequest(subject=ref))
            access.append(seconds)
        for k in range(requests):
            ref = by_user(run, (people // 2 + k * 11) % people)
            seconds, request = until_completed(
                stub, stub.RequestErasure, gov.RequestErasureRequest(subject=ref)
            )
            erasure.append(seconds)
            receipts.append(request)
        print(f"  RequestAccess -> COMPLETED          {summary(access)}")
        print(f"  RequestErasure -> COMPLETED         {summary(erasure)}   target < 5 s")
        done = [v for v in erasure if v == v]
        if done:
            print(f"    ratio to a GetProfile round trip  p50 {statistics.median(done) / base50:,.0f}x")
        for request in receipts:
            if request.state != gov.REQUEST_STATE_COMPLETED:
                steps = ", ".join(
                    f"{s.name}:{gov.RequestState.Name(s.state)} {s.detail[:80]}" for s in request.steps
                )
                print(
                    f"    erasure {request.request_id} not completed within {REQUEST_TIMEOUT:.0f} s: {steps}"
                )
            else:
                print_receipt(request)
        if any(v != v for v in access + erasure):
            raise RuntimeError("some requests did not complete")
    finally:
        identity.close()
        governance.close()
