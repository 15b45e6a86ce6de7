"""An audience across the real cluster: Segment's SDK → ingest (HTTP) → the log → identity → segments (gRPC).

An audience defined in the language over gRPC gains a person the moment their qualifying order arrives over
HTTP, gains another when an alias merges the anonymous laptop that ordered into the known profile that is on
the pro plan, answers identity's ListProfiles audience filter, and loses both once the order leaves its sliding
window, with no further event: the segments clock notices. Every step is watched on WatchMemberships, which
also says why each change happened. How fast the first entry arrives is printed, not asserted (CI machines are
loaded); `bench.segments.latency` measures it under load.
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]

from cdp.common.v1 import identity_pb2
from cdp.identity.v1 import identity_service_pb2 as identity_pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.segments.v1 import segments_service_pb2 as pb
from cdp.segments.v1 import segments_service_pb2_grpc
from tests.e2e.conftest import cdp, wait_until

pytestmark = pytest.mark.e2e
ADMIN = (("authorization", "Bearer dev-admin-token"),)
USER = identity_pb2.IDENTIFIER_TYPE_USER_ID
WINDOW_SECONDS = 20
AUDIENCE = f'traits.plan = "pro" and event("Order Completed").count(within {WINDOW_SECONDS}s) >= 1'


@pytest.fixture
def cluster(cluster_env: dict[str, str]) -> Iterator[dict[str, str]]:
    started = cdp(cluster_env, "up", "--timeout", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    yield cluster_env


class Watch:
    """WatchMemberships in a thread: every change, with when it reached this process."""

    def __init__(self, stub: segments_service_pb2_grpc.SegmentsServiceStub, audience_id: str) -> None:
        self.changes: list[tuple[float, pb.WatchMembershipsResponse]] = []
        self.call = stub.WatchMemberships(
            pb.WatchMembershipsRequest(audience_ids=[audience_id]), metadata=ADMIN
        )
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for change in self.call:
                self.changes.append((time.time(), change))
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def of(self, profile_id: str) -> list[tuple[float, pb.WatchMembershipsResponse]]:
        return [(at, change) for at, change in list(self.changes) if change.profile_id == profile_id]

    def close(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]
        self.thread.join(10)


def profile_of(identity: Any, user: str, holding: set[str] | None = None) -> str:
    """The profile id of a user id, once identity has it (and, when asked, holds these identifiers)."""

    def found() -> str | None:
        ref = identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=USER, value=user))
        try:
            reply = identity.GetProfile(identity_pb.GetProfileRequest(profile=ref), metadata=ADMIN)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        values = {i.identifier.value for i in reply.profile.identifiers}
        return str(reply.profile.profile_id) if not holding or holding <= values else None

    return wait_until(found, f"identity resolved {user}")


def test_an_audience_gains_members_from_http_events_and_merges_and_loses_them_when_the_window_passes(
    cluster: dict[str, str],
) -> None:
    errors: list[Any] = []
    sdk = SegmentClient(
        "dev-write-key",
        host=f"http://127.0.0.1:{cluster['CDP_HTTP_PORT']}",
        on_error=lambda error, batch: errors.append(error),
        sync_mode=True,
    )
    with (
        grpc.insecure_channel(f"127.0.0.1:{cluster['CDP_SEGMENTS_PORT']}") as segments_channel,
        grpc.insecure_channel(f"127.0.0.1:{cluster['CDP_IDENTITY_PORT']}") as identity_channel,
    ):
        segments = segments_service_pb2_grpc.SegmentsServiceStub(segments_channel)
        identity = identity_service_pb2_grpc.IdentityServiceStub(identity_channel)
        audience = pb.Audience(
            audience_id="recent_pro_buyers", display_name="Recent pro buyers", expression=AUDIENCE
        )
        created = segments.CreateAudience(
            pb.CreateAudienceRequest(audience=audience), metadata=ADMIN, timeout=60
        )
        assert created.audience.state == pb.AUDIENCE_STATE_ACTIVE
        watch = Watch(segments, "recent_pro_buyers")
        try:
            # Ann is on the pro plan; she qualifies with her order.
            sdk.identify("ann", {"plan": "pro"})
            ann = profile_of(identity, "ann")
            sdk.track("ann", "Order Completed", {"revenue": 120})
            ordered = time.time()
            assert errors == []
            entered = wait_until(lambda: watch.of(ann), "Ann entered")[0]
            print(f"\nAnn's order → her entry on the watch: {(entered[0] - ordered) * 1000:.0f} ms")
            assert entered[1].kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED
            assert entered[1].reason == "event"
            assert list(entered[1].changed_conditions) == [
                f'event("Order Completed").count(within {WINDOW_SECONDS}s) >= 1'
            ]

            # Bob is on the pro plan on his phone, and orders anonymously on his laptop: not yet a member.
            sdk.identify("bob", {"plan": "pro"}, anonymous_id="bob-phone")
            sdk.track(anonymous_id="bob-laptop", event="Order Completed", properties={"revenue": 40})
            sdk.alias("bob-laptop", "bob")  # the laptop was Bob's: its profile merges into his
            assert errors == []
            bob = profile_of(identity, "bob", holding={"bob", "bob-phone", "bob-laptop"})
            merged = wait_until(lambda: watch.of(bob), "Bob entered after the merge")[0][1]
            assert merged.kind == pb.MEMBERSHIP_CHANGE_KIND_ENTERED and merged.reason in {"merge", "event"}

            by_user = identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=USER, value="bob"))
            checked = segments.CheckMembership(
                pb.CheckMembershipRequest(profile=by_user, audience_ids=["recent_pro_buyers"]), metadata=ADMIN
            )
            assert checked.memberships[0].member
            nobody = identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=USER, value="nobody"))
            with pytest.raises(grpc.RpcError) as refused:
                segments.CheckMembership(pb.CheckMembershipRequest(profile=nobody), metadata=ADMIN)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # identity's answer, passed on

            def listed() -> set[str]:
                request = identity_pb.ListProfilesRequest(
                    filter=identity_pb.ProfileFilter(audience_id="recent_pro_buyers")
                )
                return {p.profile_id for p in identity.ListProfiles(request, metadata=ADMIN).profiles}

            assert listed() == {ann, bob}

            # No more events: the orders leave the window and the clock takes both out.
            def both_left() -> bool:
                return all(
                    any(c.kind == pb.MEMBERSHIP_CHANGE_KIND_EXITED for _, c in watch.of(p))
                    for p in (ann, bob)
                )

            wait_until(both_left, "both left when the window passed", timeout=WINDOW_SECONDS + 90)
            for person in (ann, bob):
                exited = [c for _, c in watch.of(person) if c.kind == pb.MEMBERSHIP_CHANGE_KIND_EXITED]
                assert [c.reason for c in exited] == ["time"]
            assert listed() == set()
            stats = segments.GetAudienceStats(
                pb.GetAudienceStatsRequest(audience_id="recent_pro_buyers"), metadata=ADMIN
            )
            assert (stats.size, stats.entered_count, stats.exited_count) == (0, 2, 2)
        finally:
            watch.close()
