"""Segment's HTTP tracking API over real HTTP on loopback: endpoints, auth, bodies, limits, statuses, CORS."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cdp.events import MessageCollected, streams
from cdp.ingest.v1 import ingest_service_pb2 as pb
from services.ingest.domain.messages import MAX_BATCH_BYTES
from services.ingest.http_api import SINGLE_PATHS, HttpLimits
from tests.integration.identity.conftest import POSTGRES
from tests.integration.ingest.conftest import WRITE_KEY, message, settings_for
from tests.integration.ingest.test_http_load import WEB_KEY, HttpIngest, basic, running_http_ingest
from tests.integration.runtime.tcp_proxy import postgres_behind_proxy

MESSAGES: dict[str, dict[str, Any]] = {
    "identify": {"userId": "u-1", "traits": {"email": "ada@example.com"}},
    "track": {"userId": "u-1", "event": "Order Completed", "properties": {"revenue": 9.5}},
    "page": {"anonymousId": "a-1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"userId": "u-1", "name": "Settings"},
    "group": {"userId": "u-1", "groupId": "g-1", "traits": {"name": "Acme"}},
    "alias": {"userId": "u-1", "previousId": "a-1"},
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[HttpIngest]:
    async with running_http_ingest(tmp_path) as running:
        yield running


async def stored(api: HttpIngest) -> dict[str, MessageCollected]:
    return {event.message_id: event for event in await api.ingest.collected()}


@pytest.mark.parametrize("path", sorted(SINGLE_PATHS))
async def test_every_single_message_path_stores_its_type(api: HttpIngest, path: str) -> None:
    kind = SINGLE_PATHS[path]
    status, body, _ = await api.post(f"/v1/{path}", {**MESSAGES[kind], "messageId": "m-1"})
    assert (status, body) == (200, {"success": True})
    [event] = (await stored(api)).values()
    assert event.message_type == kind and event.source_id == "web"
    subject = ("user_id", "u-1") if "userId" in MESSAGES[kind] else ("anonymous_id", "a-1")
    assert event.subject_id == api.ingest.subject(*subject)


@pytest.mark.parametrize("path", ["batch", "b", "import"])
async def test_batch_paths_store_every_message_with_the_shared_context(api: HttpIngest, path: str) -> None:
    batch = [{"type": kind, **fields, "messageId": f"{path}-{kind}"} for kind, fields in MESSAGES.items()]
    body = {"batch": batch, "context": {"library": {"name": "test"}}, "sentAt": "2026-01-01T00:00:00Z"}
    status, reply, _ = await api.post(f"/v1/{path}", body)
    assert (status, reply) == (200, {"success": True})
    events = await stored(api)
    assert sorted(event.message_type for event in events.values()) == sorted(MESSAGES)
    payload = events[f"{path}-track"].open_payload(api.ingest.keyring)
    assert payload["context"]["library"] == {"name": "test"}
    assert payload["properties"] == {"revenue": 9.5}


async def test_a_track_is_stored_encrypted_in_its_subject_stream(api: HttpIngest) -> None:
    await api.post("/v1/track", {**MESSAGES["track"], "context": {"ip": "198.51.100.4"}, "messageId": "t"})
    [recorded] = await api.ingest.log.read_stream(
        streams.subject_stream(api.ingest.subject("user_id", "u-1"))
    )
    assert b"198.51.100.4" not in recorded.data and b"u-1" not in recorded.data


@pytest.mark.parametrize(
    "headers",
    [basic(WEB_KEY), {"Authorization": f"Bearer {WEB_KEY}"}],
    ids=["basic", "bearer"],
)
async def test_a_header_write_key_names_the_source(api: HttpIngest, headers: dict[str, str]) -> None:
    status, _, _ = await api.post("/v1/t", MESSAGES["track"], headers=headers)
    assert status == 200
    assert [event.source_id for event in (await stored(api)).values()] == ["web"]


async def test_a_body_write_key_as_text_plain_is_accepted_and_never_stored(api: HttpIngest) -> None:
    """analytics.js sends JSON as text/plain, with the write key in the body, to avoid a CORS preflight."""
    body = json.dumps({**MESSAGES["page"], "writeKey": "ios-key", "messageId": "p"}).encode()
    async with api.http.post(api.url + "/v1/p", data=body, headers={"Content-Type": "text/plain"}) as reply:
        assert reply.status == 200
    [event] = (await stored(api)).values()
    assert event.source_id == "ios"
    [recorded] = await api.ingest.log.read_stream(streams.subject_stream(event.subject_id))
    assert b"ios-key" not in recorded.data
    assert "ios-key" not in json.dumps(event.open_payload(api.ingest.keyring))


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic bm9wZTo="},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Digest x"},
        {},
    ],
    ids=["unknown-basic", "unknown-bearer", "bad-scheme", "missing"],
)
async def test_unknown_or_missing_write_keys_get_401(api: HttpIngest, headers: dict[str, str]) -> None:
    data = json.dumps(MESSAGES["track"]).encode()
    async with api.http.post(api.url + "/v1/track", data=data, headers=headers) as reply:
        assert reply.status == 401
        body = await reply.json()
    assert body["success"] is False and body["code"] == "unauthorized"
    assert await api.ingest.collected() == []


async def test_an_unknown_body_write_key_gets_401(api: HttpIngest) -> None:
    status, body, _ = await api.post(
        "/v1/track", {**MESSAGES["track"], "writeKey": "nope"}, headers={"Authorization": ""}
    )
    assert (status, body["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies_are_inflated(api: HttpIngest, encoding: str) -> None:
    raw = json.dumps({"batch": [{"type": "track", **MESSAGES["track"], "messageId": "z"}]}).encode()
    data = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    headers = {**basic(WEB_KEY), "Content-Encoding": encoding, "Content-Type": "application/json"}
    async with api.http.post(api.url + "/v1/batch", data=data, headers=headers) as reply:
        assert reply.status == 200
    assert list(await stored(api)) == ["z"]


async def test_a_body_over_the_batch_limit_gets_413(api: HttpIngest) -> None:
    big = {"batch": [{"type": "track", **MESSAGES["track"], "properties": {"x": "y" * 20_000}}] * 30}
    status, body, _ = await api.post("/v1/batch", big)
    assert (status, body["code"]) == (413, "payload_too_large")
    status, _, _ = await api.post("/v1/track", {**MESSAGES["track"], "properties": {"x": "y" * 40_000}})
    assert status == 413
    assert await api.ingest.collected() == []


async def test_a_gzip_bomb_is_refused_without_inflating_it(api: HttpIngest) -> None:
    # 100 MB of spaces compress to ~100 KB; inflated, it would be far past the 500 KB limit.
    bomb = gzip.compress(b'{"batch": [' + b" " * 100_000_000 + b"]}", compresslevel=9)
    assert len(bomb) < MAX_BATCH_BYTES
    status, body, _ = await api.post("/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    assert (status, body["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("data", "encoding", "problem"),
    [
        (b"{not json", None, "is not valid JSON"),
        (b"", None, "is empty"),
        (b"\xff\xfe{}", None, "is not"),
        (b'{"userId": "u", "event": "E", "properties": {"x": "\xed\xa0\x80"}}', None, "UTF-8"),
        (b'{"userId": NaN}', None, "NaN"),
        (b"not gzip at all", "gzip", "compressed"),
        (gzip.compress(b'{"userId": "u"}')[:-6], "gzip", "truncated"),
    ],
    ids=["syntax", "empty", "not-utf8", "encoded-surrogate", "nan", "not-gzip", "truncated-gzip"],
)
async def test_a_body_that_is_not_json_gets_400_naming_the_problem(
    api: HttpIngest, data: bytes, encoding: str | None, problem: str
) -> None:
    status, body, _ = await api.post(
        "/v1/track", data, headers={"Content-Encoding": encoding} if encoding else {}
    )
    assert status == 400
    assert body["errors"][0]["field"] == "body" and problem in body["errors"][0]["description"]


async def test_a_rejected_single_message_gets_400_naming_the_field(api: HttpIngest) -> None:
    status, body, _ = await api.post("/v1/track", {"userId": "u-1", "properties": []})
    assert status == 400
    fields = {error["field"]: error for error in body["errors"]}
    assert sorted(fields) == ["event", "properties"]
    assert fields["event"]["reason"] == "missing_field"


async def test_a_batch_with_a_bad_message_stores_the_good_ones_and_names_the_bad(api: HttpIngest) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "A", "messageId": "good-0"},
        {"type": "track", "userId": "u", "messageId": "bad-1"},
        {"type": "identify", "anonymousId": "x", "messageId": "good-2"},
        "not an object",
    ]
    status, body, _ = await api.post("/v1/batch", {"batch": batch})
    assert status == 400 and body["success"] is False
    assert [(error["index"], error["field"]) for error in body["errors"]] == [
        (1, "batch[1].event"),
        (3, "batch[3]"),
    ]
    assert body["errors"][0]["messageId"] == "bad-1"
    assert sorted(await stored(api)) == ["good-0", "good-2"]


async def test_a_batch_with_values_no_later_step_could_hold_stores_the_rest(api: HttpIngest) -> None:
    deep: Any = 1
    for _ in range(60):
        deep = {"a": deep}
    batch = [
        {"type": "identify", "userId": "u", "messageId": "good-0", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "u", "messageId": "deep-1", "traits": deep},
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "year-1",
            "timestamp": "0001-01-01T00:00:00+05:00",
        },
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "skew-3",
            "timestamp": "9999-12-31T23:59:59Z",
            "sentAt": "0001-01-01T00:00:00Z",
        },
        {"type": "track", "userId": "u", "event": "E", "messageId": "good-4"},
    ]
    text = (
        json.dumps({"batch": batch})[:-2]
        + ', {"type": "track", "userId": "u", "event": "E", "messageId": "inf-5", "properties": {"x": 1e400}}]}'
    )
    status, body, _ = await api.post("/v1/batch", text.encode())
    assert status == 400, body
    assert [(error["index"], error["reason"]) for error in body["errors"]] == [
        (1, "invalid_field"),
        (2, "timestamp_out_of_range"),
        (3, "timestamp_out_of_range"),
        (5, "invalid_field"),
    ]
    assert body["errors"][3]["field"] == "batch[5].properties.x"
    assert sorted(await stored(api)) == ["good-0", "good-4"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"batch": []}, "batch"), ({"batch": {}}, "batch"), ([1, 2], "body"), ({"batch": [{}] * 2501}, "batch")],
    ids=["empty", "not-a-list", "not-an-object", "too-many"],
)
async def test_a_malformed_batch_gets_400_and_stores_nothing(api: HttpIngest, body: Any, field: str) -> None:
    status, reply, _ = await api.post("/v1/batch", body)
    assert status == 400 and reply["errors"][0]["field"] == field


async def test_a_resent_batch_is_stored_once(api: HttpIngest) -> None:
    batch = {
        "batch": [{"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"r-{i}"} for i in range(5)]
    }
    first = await api.post("/v1/batch", batch)
    second = await api.post("/v1/batch", batch)
    assert first[:2] == second[:2] == (200, {"success": True})
    assert sorted(await stored(api)) == [f"r-{i}" for i in range(5)]


async def test_wrong_media_types_get_415_and_unknown_paths_404(api: HttpIngest) -> None:
    status, body, _ = await api.post(
        "/v1/track", MESSAGES["track"], headers={"Content-Type": "application/xml"}
    )
    assert (status, body["code"]) == (415, "unsupported_media_type")
    status, _, _ = await api.post("/v1/track", MESSAGES["track"], headers={"Content-Encoding": "br"})
    assert status == 415
    status, body, _ = await api.post("/v1/nothing", MESSAGES["track"])
    assert status == 404 and body["success"] is False
    async with api.http.get(api.url + "/v1/track") as reply:
        assert reply.status == 405
    status, _, _ = await api.post("/v1/t", MESSAGES["track"], headers={"Content-Type": "multipart/form-data"})
    assert status == 415


async def test_cors_preflight_and_origin_echo(api: HttpIngest) -> None:
    origin = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    async with api.http.options(api.url + "/v1/t", headers=origin) as reply:
        assert reply.status == 204
        assert reply.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        allowed = {h.strip().lower() for h in reply.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "content-encoding"} <= allowed
        assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    _, _, headers = await api.post("/v1/t", MESSAGES["track"], headers={"Origin": "https://shop.example"})
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"


async def test_the_settings_endpoint_boots_analytics_js(api: HttpIngest) -> None:
    async with api.http.get(api.url + f"/v1/projects/{WEB_KEY}/settings") as reply:
        assert reply.status == 200
        settings = await reply.json()
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == WEB_KEY and segment["protocol"] == "http"
    assert segment["apiHost"] == api.url.removeprefix("http://") + "/v1"
    assert {"plan", "edgeFunction"} <= settings.keys()
    for key in ("unknown-key", "dev-admin-token"):
        async with api.http.get(api.url + f"/v1/projects/{key}/settings") as reply:
            assert reply.status == 404


async def test_health(api: HttpIngest) -> None:
    async with api.http.get(api.url + "/health") as reply:
        assert (reply.status, await reply.json()) == (200, {"status": "serving"})


async def test_over_the_in_flight_limit_requests_get_429_with_retry_after(tmp_path: Path) -> None:
    async with running_http_ingest(tmp_path, limits=HttpLimits(max_in_flight_requests=1)) as api:
        host, port = api.url.removeprefix("http://").split(":")
        # A request whose body is still arriving holds the only in-flight slot.
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({**MESSAGES["track"], "messageId": "slow"}).encode()
        head = "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Authorization: Bearer {WEB_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        status, reply, headers = await api.post("/v1/track", {**MESSAGES["track"], "messageId": "shed"})
        assert (status, reply["code"], headers["Retry-After"]) == (429, "too_many_requests", "1")
        writer.write(body[10:])
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        status, _, _ = await api.post("/v1/track", {**MESSAGES["track"], "messageId": "after"})
        assert status == 200
        assert sorted(await stored(api)) == ["after", "slow"]


async def test_stopping_ingest_closes_the_http_port(tmp_path: Path) -> None:
    async with running_http_ingest(tmp_path) as api:
        host, port = api.url.removeprefix("http://").split(":")
        assert (await api.post("/v1/t", MESSAGES["track"]))[0] == 200
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))


@pytest.mark.postgres
async def test_an_outage_gets_503_with_retry_after_on_http_and_unavailable_on_grpc_then_recovers(
    tmp_path: Path,
) -> None:
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    async with postgres_behind_proxy(POSTGRES) as database:
        settings = settings_for(
            tmp_path,
            CDP_HTTP_PORT="0",
            CDP_EVENT_STORE=database.event_store,
            CDP_READ_MODEL_URL=database.read_model_url,
        )
        async with running_http_ingest(tmp_path, settings=settings) as api:
            assert (await api.post("/v1/track", {**MESSAGES["track"], "messageId": "before"}))[0] == 200
            await database.proxy.cut()
            batch = {"batch": [{**MESSAGES["track"], "type": "track", "messageId": "during"}]}
            for path, body in (
                ("/v1/track", {**MESSAGES["track"], "messageId": "during"}),
                ("/v1/batch", batch),
            ):
                status, reply, headers = await api.post(path, body)
                assert (status, reply["code"], headers.get("Retry-After")) == (503, "unavailable", "2"), path
            track = pb.TrackRequest(message=message(userId="u-1", event="Signed Up", messageId="during-grpc"))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.ingest.stub.Track(track, metadata=WRITE_KEY)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            await database.proxy.restore()
            assert (await api.post("/v1/track", {**MESSAGES["track"], "messageId": "after"}))[0] == 200
            assert sorted(await stored(api)) == ["after", "before"]
