"""The erasure proof, against the real local cluster (`cdp up`), on the SQLite default and on PostgreSQL.

Two people are collected over HTTP with Segment's SDK (identify with e-mail, name and phone; events whose
properties repeat them; consent from `context.consent`), unified by identity and put in an audience by segments.
Governance exports the other person's data (an access request), then erases the first one by e-mail with
suppression. Once the erasure completes, every byte of every file under the data directory (the log, every read
model, their WAL files, the keyring, the services' logs) is scanned for the erased person's e-mail, name, phone
and user id, in the encodings a file could hold them in, and none is found; on PostgreSQL every row of every
table of the installation's schema is scanned too. The other person is intact: identity's profile, the audience
membership, and their messages, decryptable in a fresh access export. The erased person's next message is
refused as suppressed, and counted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]

from cdp.common.v1 import identity_pb2, message_pb2
from cdp.governance.v1 import governance_service_pb2 as gov
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.identity.v1 import identity_service_pb2 as identity_pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.ingest.v1 import ingest_service_pb2 as ingest_pb
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.segments.v1 import segments_service_pb2 as seg
from cdp.segments.v1 import segments_service_pb2_grpc
from tests.e2e.conftest import cdp, wait_until

pytestmark = pytest.mark.e2e
ADMIN = (("authorization", "Bearer dev-admin-token"),)
WRITE = (("authorization", "Bearer dev-write-key"),)
POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

ERIN = {
    "user_id": "erin-7Qm2v",
    "anonymous_id": "anon-erin-8Jx4",
    "email": "erin.kowalczyk.proof@example.org",
    "name": "Erin Kowalczyk-Proof",
    "phone": "+14155550199",
}
BRUNO = {
    "user_id": "bruno-3Zt9k",
    "anonymous_id": "anon-bruno-2Hw6",
    "email": "bruno.ferreira.kept@example.net",
    "name": "Bruno Ferreira-Kept",
    "phone": "+442071838750",
}


@contextlib.contextmanager
def running(env: dict[str, str], backend: str) -> Iterator[tuple[dict[str, str], str]]:
    """The cluster up on `backend` (PostgreSQL: log, read models and keyring in a throwaway schema)."""
    schema = ""
    if backend == "postgres":
        schema = f"test_erasure_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
        env["CDP_EVENT_STORE"] = f"{POSTGRES}?schema={schema}"
        env["CDP_READ_MODEL_URL"] = url
        env["CDP_KEYRING_URL"] = url
    started = cdp(env, "up", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield env, schema
    finally:
        cdp(env, "down")
        if schema:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(
    request: pytest.FixtureRequest, cluster_env: dict[str, str]
) -> Iterator[tuple[dict[str, str], str]]:
    with running(cluster_env, request.param) as found:
        yield found


def forms(value: str) -> list[bytes]:
    """The ways a file could hold a value: UTF-8 (also inside JSON), UTF-16 either way, JSON-escaped."""
    escaped = json.dumps(value)[1:-1]
    found = {value.encode(), value.encode("utf-16-le"), value.encode("utf-16-be"), escaped.encode()}
    found.add(escaped.replace("+", "\\u002b").encode())
    return sorted(found)


def leaks(directory: Path, values: dict[str, str]) -> list[str]:
    """Every (file, value kind) where a value is found in the bytes of a file under `directory`."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for kind, value in values.items():
            if any(form in data for form in forms(value)):
                found.append(f"{path.relative_to(directory)}: {kind}")
    return found


def table_leaks(schema: str, values: dict[str, str]) -> list[str]:
    """Every (table, value kind) where a row of a table in the schema holds a value, as text."""
    found = []
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            )
        ]
        for table in tables:
            rows = conn.execute(f'SELECT t::text FROM "{schema}"."{table}" AS t'.encode()).fetchall()
            text = "\n".join(r[0] for r in rows)
            for kind, value in values.items():
                if value in text or json.dumps(value)[1:-1] in text:
                    found.append(f"{table}: {kind}")
    return found


def send(sdk: SegmentClient, person: dict[str, str], plan: str) -> None:
    """An anonymous visit, sign-up (identify), events that repeat the person's details, consent."""
    consent = {"consent": {"categoryPreferences": {"Analytics": True, "Advertising": False}}}
    sdk.page(anonymous_id=person["anonymous_id"], name="Home", properties={"path": "/"})
    sdk.identify(
        person["user_id"],
        {"email": person["email"], "name": person["name"], "phone": person["phone"], "plan": plan},
        anonymous_id=person["anonymous_id"],
        context=consent,
    )
    sdk.track(
        person["user_id"],
        "Newsletter Signup",
        {"contact": person["email"], "full_name": person["name"], "mobile": person["phone"]},
    )
    sdk.track(person["user_id"], "Order Completed", {"revenue": 42, "shipping_name": person["name"]})


def by(kind: identity_pb2.IdentifierType, value: str) -> identity_pb2.ProfileRef:
    return identity_pb2.ProfileRef(identifier=identity_pb2.Identifier(type=kind, value=value))


EMAIL, USER = identity_pb2.IDENTIFIER_TYPE_EMAIL, identity_pb2.IDENTIFIER_TYPE_USER_ID


class Platform:
    """The running cluster's gRPC services and Segment's SDK over its HTTP API."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.problems: list[Any] = []
        self.sdk = SegmentClient(
            "dev-write-key",
            host=f"http://127.0.0.1:{env['CDP_HTTP_PORT']}",
            on_error=lambda error, batch: self.problems.append(error),
            sync_mode=True,
        )
        self._channels = {
            name: grpc.insecure_channel(f"127.0.0.1:{env[f'CDP_{name.upper()}_PORT']}")
            for name in ("identity", "segments", "governance", "ingest")
        }
        self.identity = identity_service_pb2_grpc.IdentityServiceStub(self._channels["identity"])
        self.segments = segments_service_pb2_grpc.SegmentsServiceStub(self._channels["segments"])
        self.governance = governance_service_pb2_grpc.GovernanceServiceStub(self._channels["governance"])
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(self._channels["ingest"])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def collect_both(self) -> None:
        """Erin and Bruno collected, unified and in the `pro_plan` audience."""
        audience = seg.Audience(
            audience_id="pro_plan", display_name="Pro plan", expression='traits.plan = "pro"'
        )
        self.segments.CreateAudience(seg.CreateAudienceRequest(audience=audience), metadata=ADMIN, timeout=60)
        send(self.sdk, ERIN, "pro")
        send(self.sdk, BRUNO, "pro")
        assert self.problems == []
        for person in (ERIN, BRUNO):
            wait_until(functools.partial(self.profile, person), f"identity unified {person['user_id']}")
            wait_until(functools.partial(self.member, person), f"{person['user_id']} in the audience")

    def profile(self, person: dict[str, str]) -> identity_pb.Profile | None:
        """The person's profile once it holds their user and anonymous ids; None when identity knows none."""
        try:
            reply = self.identity.GetProfile(
                identity_pb.GetProfileRequest(profile=by(EMAIL, person["email"])), metadata=ADMIN, timeout=10
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        values = {i.identifier.value for i in reply.profile.identifiers}
        found: identity_pb.Profile = reply.profile
        return found if {person["user_id"], person["anonymous_id"]} <= values else None

    def member(self, person: dict[str, str]) -> bool:
        reply = self.segments.CheckMembership(
            seg.CheckMembershipRequest(profile=by(USER, person["user_id"]), audience_ids=["pro_plan"]),
            metadata=ADMIN,
            timeout=10,
        )
        return bool(reply.memberships[0].member)

    def request(self, request_id: str) -> gov.SubjectRequest | None:
        """The request, or None while governance does not answer (restarting)."""
        try:
            reply = self.governance.GetRequest(
                gov.GetRequestRequest(request_id=request_id), metadata=ADMIN, timeout=10
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise
        found: gov.SubjectRequest = reply.request
        return found

    def completed(self, request_id: str) -> gov.SubjectRequest | None:
        found = self.request(request_id)
        return found if found is not None and found.state == gov.REQUEST_STATE_COMPLETED else None

    def erase_erin(self) -> gov.SubjectRequest:
        opened: gov.SubjectRequest = self.governance.RequestErasure(
            gov.RequestErasureRequest(
                subject=by(EMAIL, ERIN["email"]), suppress=True, external_reference="T-1"
            ),
            metadata=ADMIN,
        ).request
        assert opened.kind == gov.REQUEST_KIND_ERASURE and opened.state == gov.REQUEST_STATE_PENDING
        assert {i.value for i in opened.identifiers} >= {ERIN["email"], ERIN["user_id"], ERIN["anonymous_id"]}
        return opened


def receipt_of(request: gov.SubjectRequest) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(json_format.MessageToJson(request.receipt))
    return found


def check_erased(platform: Platform, erased: gov.SubjectRequest, data_dir: Path, schema: str) -> None:
    """Nothing of Erin anywhere, her next message refused; Bruno intact and exported in full."""
    receipt = receipt_of(erased)
    print(f"\nerasure receipt: {json.dumps(receipt)[:700]}")
    assert receipt["events_deleted"] >= 4 and receipt["keys_shredded"] >= 3
    assert erased.complete_time.ToDatetime() <= erased.due_time.ToDatetime()
    assert {s.name for s in erased.steps} >= {"keys_destroyed", "announced", "log_erased", "purged:identity"}
    assert all(not i.value for i in erased.identifiers)  # the request keeps types, never the values

    assert leaks(data_dir, ERIN) == []
    if schema:
        assert table_leaks(schema, ERIN) == []

    assert platform.profile(ERIN) is None
    late = message_pb2.Message(type=message_pb2.MESSAGE_TYPE_TRACK, user_id=ERIN["user_id"], event="Login")
    result = platform.ingest.Batch(ingest_pb.BatchRequest(messages=[late]), metadata=WRITE).results[0]
    assert (result.status, result.reason) == (
        ingest_pb.MESSAGE_STATUS_REJECTED,
        ingest_pb.REJECTION_REASON_SUPPRESSED,
    )

    kept = platform.profile(BRUNO)
    assert kept is not None and kept.traits.fields["name"].string_value == BRUNO["name"]
    assert platform.member(BRUNO)
    access = platform.governance.RequestAccess(
        gov.RequestAccessRequest(subject=by(USER, BRUNO["user_id"])), metadata=ADMIN
    ).request
    exported = wait_until(functools.partial(platform.completed, access.request_id), "Bruno's export", 60)
    export: dict[str, Any] = json.loads(json_format.MessageToJson(exported.export))
    text = json.dumps(export)
    assert all(BRUNO[k] in text for k in ("email", "name", "phone", "user_id"))
    assert len(export["messages"]) == 4
    assert "pro_plan" in export["audience_memberships"]["current"]
    assert ERIN["email"] not in text


def test_an_erased_person_is_in_no_file_and_everyone_else_is_intact(
    cluster: tuple[dict[str, str], str],
) -> None:
    env, schema = cluster
    data_dir = Path(env["CDP_DATA_DIR"])
    platform = Platform(env)
    try:
        platform.collect_both()
        # Before: Erin's details are in the data directory (a scan that finds nothing proves nothing).
        before = leaks(data_dir, ERIN) + (table_leaks(schema, ERIN) if schema else [])
        assert any(": email" in leak for leak in before), before

        opened = platform.erase_erin()
        erased = wait_until(functools.partial(platform.completed, opened.request_id), "the erasure", 120)
        assert receipt_of(erased)["seconds"] < 60
        check_erased(platform, erased, data_dir, schema)
    finally:
        platform.close()


def test_an_erasure_interrupted_by_a_crash_is_resumed_to_completion(cluster_env: dict[str, str]) -> None:
    """kill -9 of governance in the middle of an erasure (segments down, so it waits after the keys were
    shredded and the erasure announced); `cdp up` restarts both and the erasure completes, each step once."""
    with running(cluster_env, "sqlite") as (env, schema):
        data_dir = Path(env["CDP_DATA_DIR"])
        platform = Platform(env)
        try:
            platform.collect_both()
            os.kill(pid_of(env, "segments"), signal.SIGKILL)
            opened = platform.erase_erin()

            def midway() -> gov.SubjectRequest | None:
                found = platform.request(opened.request_id)
                done = (
                    {s.name for s in found.steps if s.state == gov.REQUEST_STATE_COMPLETED}
                    if found
                    else set()
                )
                return found if {"keys_destroyed", "announced", "purged:identity"} <= done else None

            waiting = wait_until(midway, "the erasure waits for segments", 60)
            assert waiting.state == gov.REQUEST_STATE_IN_PROGRESS
            assert "log_erased" not in {s.name for s in waiting.steps}
            os.kill(pid_of(env, "governance"), signal.SIGKILL)

            again = cdp(env, "up", "--timeout", "90")
            assert again.returncode == 0, again.stdout + again.stderr
            erased = wait_until(functools.partial(platform.completed, opened.request_id), "resumed", 120)
            names = [s.name for s in erased.steps]
            assert len(names) == len(set(names)), names  # every step recorded once
            check_erased(platform, erased, data_dir, schema)
        finally:
            platform.close()


def pid_of(env: dict[str, str], service: str) -> int:
    return int((Path(env["CDP_DATA_DIR"]) / "run" / f"{service}.pid").read_text())
