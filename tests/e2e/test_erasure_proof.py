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

import json
import os
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


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(
    request: pytest.FixtureRequest, cluster_env: dict[str, str]
) -> Iterator[tuple[dict[str, str], str]]:
    schema = ""
    if request.param == "postgres":
        schema = f"test_erasure_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
        cluster_env["CDP_EVENT_STORE"] = f"{POSTGRES}?schema={schema}"
        cluster_env["CDP_READ_MODEL_URL"] = url
        cluster_env["CDP_KEYRING_URL"] = url
    started = cdp(cluster_env, "up", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield cluster_env, schema
    finally:
        cdp(cluster_env, "down")
        if schema:
            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


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


def completed(governance: Any, request_id: str) -> gov.SubjectRequest | None:
    reply = governance.GetRequest(gov.GetRequestRequest(request_id=request_id), metadata=ADMIN)
    request: gov.SubjectRequest = reply.request
    return request if request.state == gov.REQUEST_STATE_COMPLETED else None


def test_an_erased_person_is_in_no_file_and_everyone_else_is_intact(
    cluster: tuple[dict[str, str], str],
) -> None:
    env, schema = cluster
    data_dir = Path(env["CDP_DATA_DIR"])
    problems: list[Any] = []
    sdk = SegmentClient(
        "dev-write-key",
        host=f"http://127.0.0.1:{env['CDP_HTTP_PORT']}",
        on_error=lambda error, batch: problems.append(error),
        sync_mode=True,
    )
    with (
        grpc.insecure_channel(f"127.0.0.1:{env['CDP_IDENTITY_PORT']}") as identity_channel,
        grpc.insecure_channel(f"127.0.0.1:{env['CDP_SEGMENTS_PORT']}") as segments_channel,
        grpc.insecure_channel(f"127.0.0.1:{env['CDP_GOVERNANCE_PORT']}") as governance_channel,
        grpc.insecure_channel(f"127.0.0.1:{env['CDP_INGEST_PORT']}") as ingest_channel,
    ):
        identity = identity_service_pb2_grpc.IdentityServiceStub(identity_channel)
        segments = segments_service_pb2_grpc.SegmentsServiceStub(segments_channel)
        governance = governance_service_pb2_grpc.GovernanceServiceStub(governance_channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(ingest_channel)

        audience = seg.Audience(
            audience_id="pro_plan", display_name="Pro plan", expression='traits.plan = "pro"'
        )
        segments.CreateAudience(seg.CreateAudienceRequest(audience=audience), metadata=ADMIN, timeout=60)
        send(sdk, ERIN, "pro")
        send(sdk, BRUNO, "pro")
        assert problems == []

        def profile(person: dict[str, str]) -> identity_pb.Profile | None:
            try:
                reply = identity.GetProfile(
                    identity_pb.GetProfileRequest(profile=by(EMAIL, person["email"])), metadata=ADMIN
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            values = {i.identifier.value for i in reply.profile.identifiers}
            found: identity_pb.Profile = reply.profile
            return found if {person["user_id"], person["anonymous_id"]} <= values else None

        def member(person: dict[str, str]) -> bool:
            reply = segments.CheckMembership(
                seg.CheckMembershipRequest(profile=by(USER, person["user_id"]), audience_ids=["pro_plan"]),
                metadata=ADMIN,
            )
            return bool(reply.memberships[0].member)

        for person in (ERIN, BRUNO):
            wait_until(lambda p=person: profile(p), f"identity unified {person['user_id']}")  # type: ignore[misc]
            wait_until(lambda p=person: member(p), f"{person['user_id']} in the audience")  # type: ignore[misc]

        # Before: Erin's details are in the data directory (a scan that finds nothing proves nothing).
        before = leaks(data_dir, ERIN) + (table_leaks(schema, ERIN) if schema else [])
        assert any(": email" in leak for leak in before), before

        # Erasure by e-mail, with suppression: received → in progress → completed, with a receipt.
        opened = governance.RequestErasure(
            gov.RequestErasureRequest(
                subject=by(EMAIL, ERIN["email"]), suppress=True, external_reference="T-1"
            ),
            metadata=ADMIN,
        ).request
        assert opened.kind == gov.REQUEST_KIND_ERASURE
        assert {i.value for i in opened.identifiers} >= {ERIN["email"], ERIN["user_id"], ERIN["anonymous_id"]}
        erased = wait_until(lambda: completed(governance, opened.request_id), "the erasure completed", 120)
        receipt: dict[str, Any] = json.loads(json_format.MessageToJson(erased.receipt))
        print(f"\nerasure receipt: {json.dumps(receipt, default=str)[:600]}")
        assert receipt["seconds"] < 60 and receipt["events_deleted"] >= 4 and receipt["keys_shredded"] >= 3
        assert erased.complete_time.ToDatetime() <= erased.due_time.ToDatetime()
        assert {s.name for s in erased.steps} >= {
            "keys_destroyed",
            "announced",
            "log_erased",
            "purged:identity",
        }
        assert all(not i.value for i in erased.identifiers)  # the request keeps types, never the values

        # Nothing of Erin in any file, nor any table.
        assert leaks(data_dir, ERIN) == []
        if schema:
            assert table_leaks(schema, ERIN) == []

        # Erin is gone from identity and segments; her next message is refused as suppressed.
        assert profile(ERIN) is None
        late = message_pb2.Message(
            type=message_pb2.MESSAGE_TYPE_TRACK, user_id=ERIN["user_id"], event="Login"
        )
        result = ingest.Batch(ingest_pb.BatchRequest(messages=[late]), metadata=WRITE).results[0]
        assert (result.status, result.reason) == (
            ingest_pb.MESSAGE_STATUS_REJECTED,
            ingest_pb.REJECTION_REASON_SUPPRESSED,
        )

        # Bruno is intact: his profile, his membership, and every message, decrypted in an access export.
        kept = profile(BRUNO)
        assert kept is not None and kept.traits.fields["name"].string_value == BRUNO["name"]
        assert member(BRUNO)
        access = governance.RequestAccess(
            gov.RequestAccessRequest(subject=by(USER, BRUNO["user_id"])), metadata=ADMIN
        ).request
        exported = wait_until(lambda: completed(governance, access.request_id), "Bruno's export", 60)
        export: dict[str, Any] = json.loads(json_format.MessageToJson(exported.export))
        sent = json.dumps(export)
        assert all(BRUNO[k] in sent for k in ("email", "name", "phone", "user_id"))
        assert len(export["messages"]) == 4
        assert "pro_plan" in export["audience_memberships"]["current"]
        assert ERIN["email"] not in sent
        assert leaks(data_dir, {"bruno email": BRUNO["email"]}) or schema  # still stored (SQLite files)
