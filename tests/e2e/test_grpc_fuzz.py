"""Generated requests against every RPC of every service of the local cluster `make up` runs.

Each RPC is found from the descriptors, so a new one is fuzzed without editing this file. A case is either
random bytes (corrupt protobuf) or a message built field by field from the request's descriptor with extreme
values (timestamps far outside any calendar, NaN and infinite doubles, out-of-range enums, long and odd text,
deep Structs holding NaN), sent with no credentials, the admin token or a write key. No answer may be INTERNAL,
UNKNOWN or DATA_LOSS (those would come from our code, not the client), and after every case identity still
answers GetProfile and ListProfiles for a person collected at the start.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from cdp.activation.v1 import activation_service_pb2
from cdp.common.v1 import identity_pb2, message_pb2
from cdp.governance.v1 import governance_service_pb2
from cdp.identity.v1 import identity_service_pb2
from cdp.ingest.v1 import ingest_service_pb2
from cdp.ops.v1 import ops_service_pb2
from cdp.segments.v1 import segments_service_pb2
from tests.e2e.conftest import cdp, environment_for, wait_until
from tests.fuzzing import fuzz_settings, record

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

SERVICES = {
    "ingest": ingest_service_pb2,
    "identity": identity_service_pb2,
    "segments": segments_service_pb2,
    "activation": activation_service_pb2,
    "governance": governance_service_pb2,
}
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
ADMIN = (("authorization", "Bearer dev-admin-token"),)
WRITE_KEY = (("authorization", "Bearer dev-write-key"),)
# Mostly callers who get past authentication, so the cases reach validation and the services' own code.
CREDENTIALS = [ADMIN, ADMIN, ADMIN, WRITE_KEY, WRITE_KEY, (), (("authorization", "Basic !!"),)]
KNOWN_USER = "fuzz-known-person"
CALL_TIMEOUT = 60.0
WATCH_TIMEOUT = 2.0
"""A watch (WatchMemberships) that was accepted stays open until its deadline: a short one ends it, answered
DEADLINE_EXCEEDED, so that a few accepted watches do not use up the test's time."""


@dataclass(frozen=True)
class Rpc:
    """One method of one service, and where it listens."""

    service: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __repr__(self) -> str:  # what hypothesis prints for a failing case
        return self.path


def rpcs() -> list[Rpc]:
    """Every method of every service, OpsService on each server included."""
    found = []
    for service, module in SERVICES.items():
        for descriptor in (
            *module.DESCRIPTOR.services_by_name.values(),
            ops_service_pb2.DESCRIPTOR.services_by_name["OpsService"],
        ):
            found += [Rpc(service, method) for method in descriptor.methods]
    return found


@dataclass
class Cluster:
    """The running cluster's channels, one per service."""

    env: dict[str, str]
    channels: dict[str, grpc.Channel]

    def call(self, rpc: Rpc, payloads: list[bytes], metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
        """Send the request bytes (several for a client stream); the status the server answered."""
        channel = self.channels[rpc.service]
        identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
        method = rpc.method
        try:
            if method.client_streaming and method.server_streaming:
                for _ in channel.stream_stream(rpc.path, **identity)(
                    iter(payloads), metadata=metadata, timeout=CALL_TIMEOUT
                ):
                    pass
            elif method.client_streaming:
                channel.stream_unary(rpc.path, **identity)(
                    iter(payloads), metadata=metadata, timeout=CALL_TIMEOUT
                )
            elif method.server_streaming:
                timeout = WATCH_TIMEOUT if method.name.startswith("Watch") else CALL_TIMEOUT
                for _ in channel.unary_stream(rpc.path, **identity)(
                    payloads[0], metadata=metadata, timeout=timeout
                ):
                    pass
            else:
                channel.unary_unary(rpc.path, **identity)(
                    payloads[0], metadata=metadata, timeout=CALL_TIMEOUT
                )
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    def reads_still_answer(self) -> None:
        """GetProfile of the known person and a ListProfiles page both succeed."""
        channel = self.channels["identity"]
        get = channel.unary_unary(
            "/cdp.identity.v1.IdentityService/GetProfile",
            request_serializer=identity_service_pb2.GetProfileRequest.SerializeToString,
            response_deserializer=identity_service_pb2.GetProfileResponse.FromString,
        )
        listing = channel.unary_unary(
            "/cdp.identity.v1.IdentityService/ListProfiles",
            request_serializer=identity_service_pb2.ListProfilesRequest.SerializeToString,
            response_deserializer=identity_service_pb2.ListProfilesResponse.FromString,
        )
        ref = identity_pb2.ProfileRef(
            identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=KNOWN_USER)
        )
        assert get(identity_service_pb2.GetProfileRequest(profile=ref), metadata=ADMIN, timeout=CALL_TIMEOUT)
        token = ""
        for _ in range(100):
            page = listing(
                identity_service_pb2.ListProfilesRequest(page={"page_size": 100, "page_token": token}),
                metadata=ADMIN,
                timeout=CALL_TIMEOUT,
            )
            token = page.page.next_page_token
            if not token:
                break


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = environment_for(tmp_path_factory.mktemp("fuzz"))
    started = cdp(env, "up", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        channels = {
            name: grpc.insecure_channel(f"127.0.0.1:{env[f'CDP_{name.upper()}_PORT']}") for name in SERVICES
        }
        running = Cluster(env, channels)
        track = ingest_service_pb2.IdentifyRequest(
            message=message_pb2.Message(user_id=KNOWN_USER, traits={"plan": "pro"})
        )
        channels["ingest"].unary_unary(
            "/cdp.ingest.v1.IngestService/Identify",
            request_serializer=ingest_service_pb2.IdentifyRequest.SerializeToString,
            response_deserializer=ingest_service_pb2.IdentifyResponse.FromString,
        )(track, metadata=WRITE_KEY, timeout=CALL_TIMEOUT)
        wait_until(lambda: _answers(running), "identity has the known person", timeout=90)
        yield running
        for channel in channels.values():
            channel.close()
    finally:
        cdp(env, "down")


def _answers(cluster: Cluster) -> bool:
    try:
        cluster.reads_still_answer()
    except grpc.RpcError:
        return False
    return True


# Field values chosen to reach the edges: calendars, floating point, enums, text and nesting.
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "x" * 5000,
        "2026-01-01T00:00:00Z",
        "dev-write-key",
        KNOWN_USER,
        "profile_id",
        "../../etc",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=200)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return INT32 | st.sampled_from([v.number for v in field.enum_type.values])
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(min_value=0, max_value=2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(min_value=0, max_value=2**64 - 1)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return INT32 | st.integers(min_value=-3, max_value=3000)
    return INT64 | st.integers(min_value=-3, max_value=3000)


def _deep_struct(levels: int) -> struct_pb2.Struct:
    value: Any = math.nan
    for _ in range(levels):
        value = {"a": value}
    struct = struct_pb2.Struct()
    struct.update({"deep": value})
    return struct


def fill(data: st.DataObject, message: Message, depth: int = 0) -> None:
    """Set a random subset of `message`'s fields to edge values, recursing into message fields."""
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.seconds = data.draw(INT64 | st.integers(min_value=-62_135_596_800, max_value=253_402_300_799))  # type: ignore[attr-defined]
        message.nanos = data.draw(INT32 | st.integers(min_value=0, max_value=999_999_999))  # type: ignore[attr-defined]
        return
    if descriptor.full_name == "google.protobuf.Struct":
        if data.draw(st.booleans()):
            message.CopyFrom(_deep_struct(data.draw(st.integers(min_value=1, max_value=90))))
        else:
            value = data.draw(st.dictionaries(TEXT, JSON, max_size=4))
            message.update(value)  # type: ignore[attr-defined]
        return
    for field in descriptor.fields:
        if not data.draw(st.booleans()):
            continue
        # A value this field's type cannot hold in Python is skipped: the wire could not carry it either.
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            _set(data, message, field, depth)


def _set(data: st.DataObject, message: Message, field: Any, depth: int) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
            key = data.draw(_scalar(key_field))
            if value_field.message_type is not None:
                if depth < 3:
                    fill(data, target[key], depth + 1)
            else:
                target[key] = data.draw(_scalar(value_field))
        return
    repeated = field.is_repeated
    count = data.draw(st.integers(min_value=0, max_value=3)) if repeated else 1
    for _ in range(count):
        if field.message_type is not None:
            if depth >= 4:
                return
            child = target.add() if repeated else target
            fill(data, child, depth + 1)
            if not repeated:
                child.SetInParent()
        elif repeated:
            target.append(data.draw(_scalar(field)))
        else:
            setattr(message, field.name, data.draw(_scalar(field)))


def _payloads(data: st.DataObject, rpc: Rpc) -> list[bytes]:
    count = data.draw(st.integers(min_value=1, max_value=3)) if rpc.method.client_streaming else 1
    payloads = []
    for _ in range(count):
        if data.draw(st.integers(min_value=0, max_value=4)) == 0:
            payloads.append(data.draw(st.binary(max_size=300)))  # corrupt protobuf, mostly
            continue
        request = GetMessageClass(rpc.method.input_type)()
        fill(data, request)
        encoded = request.SerializeToString()
        if data.draw(st.integers(min_value=0, max_value=5)) == 0 and encoded:
            cut = data.draw(st.integers(min_value=1, max_value=len(encoded)))
            encoded = encoded[:-cut]  # truncated mid-field
        payloads.append(encoded)
    return payloads


ALL = rpcs()


@fuzz_settings(400)
@given(data=st.data())
def test_no_generated_request_gets_internal_unknown_or_data_loss_and_reads_keep_answering(
    cluster: Cluster, data: st.DataObject
) -> None:
    rpc = data.draw(st.sampled_from(ALL))
    metadata = data.draw(st.sampled_from(CREDENTIALS))
    code = cluster.call(rpc, _payloads(data, rpc), metadata)
    record(f"grpc {rpc.service}", code.name)
    assert code not in FORBIDDEN, f"{rpc.path} answered {code.name}"
    cluster.reads_still_answer()


def test_every_method_of_every_service_is_drawn_from() -> None:
    for service, module in SERVICES.items():
        for descriptor in module.DESCRIPTOR.services_by_name.values():
            assert {m.name for m in descriptor.methods} <= {
                r.method.name for r in ALL if r.service == service
            }
    assert sum(r.method.containing_service.name == "OpsService" for r in ALL) == len(SERVICES)
