"""The real Segment and RudderStack Python SDKs, pointed at ingest's HTTP API, and what lands in the log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]

from cdp.events import MessageCollected, from_recorded, streams
from tests.integration.ingest.conftest import Ingest
from tests.integration.ingest.test_http_load import ServerThread

Sdk = Any  # SegmentClient or RudderClient: neither package ships type hints


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path) as running:
        yield running


def send_every_call(client: Sdk, prefix: str) -> None:
    """One of each call, as an application would make them."""
    client.identify(f"{prefix}-user", {"email": f"{prefix}@example.com", "plan": "pro"})
    client.track(f"{prefix}-user", "Order Completed", {"revenue": 42.5, "currency": "EUR"})
    client.page(f"{prefix}-user", category="Docs", name="Pricing", properties={"path": "/pricing"})
    client.screen(f"{prefix}-user", name="Home", properties={"tab": "feed"})
    client.group(f"{prefix}-user", f"{prefix}-company", {"employees": 12})
    client.alias(f"{prefix}-previous", f"{prefix}-user")
    client.track(anonymous_id=f"{prefix}-anon", event="Signed Up", properties={"trial": True})


def flushed(client: Sdk, errors: list[Any]) -> None:
    """Send what is queued, wait for it, stop the consumer threads; the SDKs must have seen no error."""
    client.flush()
    client.join()
    assert errors == [], f"the SDK reported errors: {errors}"


async def stored_by_subject(ingest: Ingest, kind: str, value: str) -> list[tuple[MessageCollected, Any]]:
    """The subject's MessageCollected events with their decrypted personal payloads."""
    recorded = await ingest.log.read_stream(streams.subject_stream(ingest.subject(kind, value)))
    events = [event for event in map(from_recorded, recorded) if isinstance(event, MessageCollected)]
    return [(event, event.open_payload(ingest.keyring)) for event in events]


def check_every_call(server: ServerThread, prefix: str, library: str) -> None:
    known = server.run(lambda ingest: stored_by_subject(ingest, "user_id", f"{prefix}-user"))
    by_type = {event.message_type: (event, payload) for event, payload in known}
    assert sorted(by_type) == ["alias", "group", "identify", "page", "screen", "track"]
    assert all(event.source_id == "web" for event, _ in known)
    identify = by_type["identify"][1]
    # RudderStack's SDK sends identify traits in context.traits, Segment's at the top level; both are kept.
    traits = identify.get("traits") or identify["context"]["traits"]
    assert traits == {"email": f"{prefix}@example.com", "plan": "pro"}
    track_event, track = by_type["track"]
    assert track_event.event_name == "Order Completed"
    assert track["properties"] == {"revenue": 42.5, "currency": "EUR"}
    assert track["context"]["library"]["name"] == library
    assert by_type["page"][1]["name"] == "Pricing" and by_type["page"][1]["properties"]["path"] == "/pricing"
    assert by_type["screen"][1]["properties"] == {"tab": "feed"}
    assert by_type["group"][1]["groupId"] == f"{prefix}-company"
    assert by_type["group"][1]["traits"] == {"employees": 12}
    assert by_type["alias"][1]["previousId"] == f"{prefix}-previous"
    assert all(
        "writeKey" not in payload and "writeKey" not in payload.get("extra", {}) for _, payload in known
    )
    [(anonymous, payload)] = server.run(
        lambda ingest: stored_by_subject(ingest, "anonymous_id", f"{prefix}-anon")
    )
    assert anonymous.event_name == "Signed Up" and payload["properties"] == {"trial": True}


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_analytics_python_delivers_every_call(server: ServerThread, gzip: bool) -> None:
    errors: list[Any] = []
    client = SegmentClient(
        write_key="web-key",
        host=server.url,
        gzip=gzip,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    send_every_call(client, "seg")
    flushed(client, errors)
    check_every_call(server, "seg", "analytics-python")


def test_rudder_sdk_python_delivers_every_call(server: ServerThread) -> None:
    errors: list[Any] = []
    client = RudderClient(
        write_key="web-key",
        host=server.url,  # the SDK's dataPlaneUrl
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    send_every_call(client, "rudder")
    flushed(client, errors)
    check_every_call(server, "rudder", "analytics-python")


def test_an_sdk_with_an_unknown_write_key_is_told_401(server: ServerThread) -> None:
    errors: list[Any] = []
    client = SegmentClient(
        write_key="not-a-key",
        host=server.url,
        max_retries=0,
        on_error=lambda error, batch: errors.append(error),
    )
    client.track("u", "E")
    client.flush()
    client.join()
    [error] = errors
    assert error.status == 401 and error.code == "unauthorized"
    assert server.run(lambda ingest: ingest.collected()) == []


def test_an_sdk_retry_of_the_same_batch_is_stored_once(server: ServerThread) -> None:
    client = SegmentClient(write_key="web-key", host=server.url, sync_mode=True, max_retries=0)
    for _ in range(2):
        client.track("same-user", "Clicked", {"n": 1}, message_id="fixed-id")
    [(event, _)] = server.run(lambda ingest: stored_by_subject(ingest, "user_id", "same-user"))
    assert event.message_id == "fixed-id"
