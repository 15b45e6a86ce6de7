"""A person's journey across the real cluster: Segment's SDK → ingest (HTTP) → the log → identity (gRPC).

Anonymous on a phone and a laptop, the person identifies on the phone, then the laptop's anonymous id is
aliased to the user id: identity ends with one profile holding every identifier, and its merge history says
why. Five separate processes share the SQLite log, so this also proves cross-process subscriptions work.
"""

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]

from cdp.common.v1 import identity_pb2
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.identity.v1 import identity_service_pb2_grpc
from tests.e2e.conftest import cdp

pytestmark = pytest.mark.e2e
ADMIN = (("authorization", "Bearer dev-admin-token"),)
USER = identity_pb2.IDENTIFIER_TYPE_USER_ID
ANON = identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID


@pytest.fixture
def cluster(cluster_env: dict[str, str]) -> Iterator[dict[str, str]]:
    started = cdp(cluster_env, "up", "--timeout", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    yield cluster_env


def by(kind: identity_pb2.IdentifierType, value: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=kind, value=value))


def eventually(probe: Any, timeout: float = 30.0) -> Any:
    """Poll until `probe` returns something truthy: the resolver follows the log in the background."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = probe()
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            found = None
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_two_devices_then_identify_then_alias_become_one_profile(cluster: dict[str, str]) -> None:
    errors: list[Any] = []
    sdk = SegmentClient(
        "dev-write-key",
        host=f"http://127.0.0.1:{cluster['CDP_HTTP_PORT']}",
        on_error=lambda error, batch: errors.append(error),
        sync_mode=True,
    )
    sdk.track(anonymous_id="phone-anon", event="App Opened")
    sdk.page(anonymous_id="laptop-anon", name="Pricing", properties={"path": "/pricing"})
    sdk.identify("user-42", {"email": "jane@example.com", "plan": "pro"}, anonymous_id="phone-anon")
    sdk.alias("laptop-anon", "user-42")
    sdk.flush()
    assert errors == []

    with grpc.insecure_channel(f"127.0.0.1:{cluster['CDP_IDENTITY_PORT']}") as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)

        def merged_profile() -> pb.Profile | None:
            reply = identity.GetProfile(pb.GetProfileRequest(profile=by(USER, "user-42")), metadata=ADMIN)
            values = {i.identifier.value for i in reply.profile.identifiers}
            return reply.profile if {"phone-anon", "laptop-anon", "user-42"} <= values else None

        profile = eventually(merged_profile)
        assert profile is not None, "identity never merged the laptop into the known profile"
        laptop = identity.GetProfile(pb.GetProfileRequest(profile=by(ANON, "laptop-anon")), metadata=ADMIN)
        assert laptop.profile.profile_id == profile.profile_id
        assert dict(profile.traits)["plan"] == "pro"

        decisions = identity.GetMergeHistory(
            pb.GetMergeHistoryRequest(profile=by(USER, "user-42")), metadata=ADMIN
        ).decisions
    merges = [d for d in decisions if d.kind == pb.DECISION_KIND_MERGE]
    assert [d.rule for d in merges] == [pb.DECISION_RULE_ALIAS], "the laptop joined because of the alias"
    assert merges[0].explanation


def test_the_demo_shows_a_resolved_profile_and_why(cluster: dict[str, str]) -> None:
    shown = cdp(cluster, "demo")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert '"plan": "pro"' in shown.stdout
    assert "DECISION_KIND_MERGE: an alias message" in shown.stdout
