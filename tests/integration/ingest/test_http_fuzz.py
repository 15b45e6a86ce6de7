"""Generated bad input against the HTTP API: never a 5xx, the server keeps serving, nothing accepted is lost."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.http_api import BATCH_PATHS, SINGLE_PATHS
from tests.fuzzing import fuzz_settings, record
from tests.integration.ingest.test_http_load import WEB_KEY, ServerThread

pytestmark = pytest.mark.fuzz

ALLOWED = {200, 400, 401, 413, 415}
PATHS = [f"/v1/{name}" for name in [*SINGLE_PATHS, *BATCH_PATHS]]
SPEC_FIELDS = [
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "groupId",
    "previousId",
    "properties",
    "traits",
    "context",
    "integrations",
    "timestamp",
    "sentAt",
    "writeKey",
]
BASIC = "Basic " + base64.b64encode(f"{WEB_KEY}:".encode()).decode()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
    | st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "2026-01-01T00:00:00Z",
            "1900-01-01T00:00:00Z",
            "9999-12-31T00:00:00Z",
            # valid ISO text that leaves the calendar once moved to UTC, or once the clock skew is corrected
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59-05:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.sampled_from(SPEC_FIELDS), json_values, max_size=10) | json_values
huge = st.integers(min_value=33_000, max_value=700_000).map(lambda size: {"userId": "u", "event": "x" * size})
deep = st.integers(min_value=100, max_value=5_000).map(
    lambda depth: {"userId": "u", "event": "E", "properties": _nested(depth)}
)
documents = (
    messages
    | st.builds(lambda batch: {"batch": batch}, st.lists(messages, max_size=8))
    | st.builds(
        lambda batch, extra: {"batch": batch, **extra},
        json_values,
        st.dictionaries(st.sampled_from(["context", "integrations", "sentAt", "writeKey"]), json_values),
    )
    | huge
    | deep
)
auth_headers = st.sampled_from(
    [
        {"Authorization": BASIC},
        {"Authorization": f"Bearer {WEB_KEY}"},
        {},
        {"Authorization": "Basic %%%"},
        {"Authorization": "Bearer "},
    ]
)
content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "",
        "text/plain;charset=UTF-8",
        "application/xml",
        "multipart/form-data",
        "image/png",
        "application/json; charset=latin-1",
    ]
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


# Numbers no double holds, written as JSON text (json.dumps cannot produce them): `1e400` parses as infinity.
_OVERFLOWING = ["1e400", "-1e309", "123456789012345678901234567890", "1" * 400]


def _encode(document: Any) -> bytes:
    try:
        text = json.dumps(document)
    except RecursionError:
        return b'{"a":' * 5000 + b"1" + b"}" * 5000
    # Swap some numbers for ones that overflow, and some strings for raw bytes that are not UTF-8.
    text = text.replace(": 0,", f": {_OVERFLOWING[len(text) % len(_OVERFLOWING)]},", 1)
    data = text.encode("utf-8", "surrogatepass")
    return data.replace(b'"x"', b'"\xed\xa0\x80"', 1) if len(data) % 3 == 0 else data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@pytest.fixture(scope="module")
def accepted(server: ServerThread) -> Iterator[set[str]]:
    """Message ids the server acknowledged; at the end every one must be in the log."""
    ids: set[str] = set()
    yield ids
    stored = {event.message_id for event in server.run(lambda ingest: ingest.collected())}
    missing = ids - stored
    assert not missing, f"{len(missing)} acknowledged messages are not in the log"


def post(server: ServerThread, path: str, data: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(server.url + path, data=data, headers=headers, timeout=30)


def check_still_serving(server: ServerThread, accepted: set[str]) -> None:
    """A good message after the bad one is acknowledged: the bad input broke nothing."""
    canary = str(uuid.uuid4())
    body = {"userId": "canary", "event": "Canary", "messageId": canary}
    reply = post(server, "/v1/track", json.dumps(body).encode(), {"Authorization": BASIC})
    assert reply.status_code == 200, reply.text
    accepted.add(canary)


def check_answer(path: str, reply: requests.Response) -> None:
    record(f"http {path}", str(reply.status_code))
    assert reply.status_code in ALLOWED, (reply.status_code, reply.text[:500])
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body.get("success"), bool)
    if reply.status_code != 200:
        assert body["success"] is False and body["message"]


fuzz = fuzz_settings(120)


@fuzz
@given(path=st.sampled_from(PATHS), document=documents, auth=auth_headers, content_type=content_types)
def test_generated_json_never_gets_a_5xx(
    server: ServerThread,
    accepted: set[str],
    path: str,
    document: Any,
    auth: dict[str, str],
    content_type: str,
) -> None:
    headers = {**auth, "Content-Type": content_type} if content_type else dict(auth)
    check_answer(path, post(server, path, _encode(document), headers))
    check_still_serving(server, accepted)


@fuzz
@given(
    path=st.sampled_from(PATHS),
    data=st.binary(max_size=2_000),
    encoding=st.sampled_from(["gzip", "deflate", "identity", "br", "x-gzip", ""]),
    compress=st.booleans(),
    cut=st.integers(min_value=0, max_value=30),
)
def test_generated_bytes_and_broken_compression_never_get_a_5xx(
    server: ServerThread, accepted: set[str], path: str, data: bytes, encoding: str, compress: bool, cut: int
) -> None:
    body = gzip.compress(data) if compress else data
    body = body[: len(body) - cut] if cut else body
    headers = {"Authorization": BASIC, "Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    check_answer(path, post(server, path, body, headers))
    check_still_serving(server, accepted)


@fuzz
@given(
    batch=st.lists(messages, min_size=1, max_size=10), good=st.lists(st.booleans(), min_size=1, max_size=10)
)
def test_the_good_messages_of_a_bad_batch_are_acknowledged_and_kept(
    server: ServerThread, accepted: set[str], batch: list[Any], good: list[bool]
) -> None:
    ids = [str(uuid.uuid4()) for _ in good]
    valid = [
        {"type": "track", "userId": "g", "event": "Good", "messageId": i}
        for i, ok in zip(ids, good, strict=True)
        if ok
    ]
    mixed = [*valid, *batch]
    reply = post(server, "/v1/batch", json.dumps({"batch": mixed}).encode(), {"Authorization": BASIC})
    check_answer("/v1/batch", reply)
    assert reply.status_code in (200, 400), reply.text[:500]
    errors = reply.json().get("errors", [])
    if any("index" not in error for error in errors):
        # The body as a whole was refused (e.g. a lone surrogate escape makes it unstorable): nothing stored.
        assert reply.status_code == 400 and errors[0]["field"] in ("body", "batch")
        return
    rejected = {error["index"] for error in errors}
    assert not rejected.intersection(range(len(valid))), "a valid message was rejected"
    accepted.update(message["messageId"] for message in valid)
