"""A real identity server on loopback over a SQLite event log, and a way to collect messages like ingest."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from cdp.eventlog import EventStore
from cdp.events import EventMetadata
from cdp.events.ingest import MessageCollected, seal_payload
from cdp.events.streams import subject_stream
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.keyring import Keyring, SubjectIds
from cdp.runtime import resources
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.identity.main import assemble
from services.identity.resolver import Resolver

ADMIN = (("authorization", "Bearer dev-admin-token"),)


@dataclass
class Harness:
    """The running server, its resolver, and the adapters a test uses to play ingest and governance."""

    server: GrpcServer
    stub: identity_service_pb2_grpc.IdentityServiceAsyncStub
    resolver: Resolver
    store: EventStore
    keyring: Keyring
    ids: SubjectIds

    async def collect(
        self,
        message_type: str,
        *,
        at: datetime,
        source: str = "web",
        event: str | None = None,
        **personal: Any,
    ) -> int:
        """Append a MessageCollected exactly as ingest does; returns its global position."""
        user, anonymous = personal.get("userId"), personal.get("anonymousId")
        identifiers = {}
        if user:
            identifiers["user_id"] = self.ids("user_id", user)
        if anonymous:
            identifiers["anonymous_id"] = self.ids("anonymous_id", anonymous)
        subject = identifiers.get("user_id") or identifiers["anonymous_id"]
        await self.keyring.prefetch([subject])
        message = MessageCollected(
            message_id=f"msg-{uuid.uuid4().hex[:12]}",
            message_type=message_type,
            source_id=source,
            subject_id=subject,
            event_name=event,
            timestamp=at,
            received_at=datetime.now(UTC),
            identifiers=identifiers,
            payload=seal_payload(self.keyring, subject, personal),
        )
        result = await self.store.append(
            subject_stream(subject), [message.to_new_event(EventMetadata(actor=f"source:{source}"))]
        )
        return result.global_position

    async def settle(self) -> None:
        """Wait until the resolver has processed everything in the log."""
        await self.resolver.wait_for(await self.store.head_position(), within=60)


def settings_for(path: Path, **changes: Any) -> Settings:
    """Development settings with every file under `path`."""
    return replace(Settings.from_env({"CDP_DATA_DIR": str(path)}), grace_seconds=0.5, **changes)


POSTGRES = os.environ.get("CDP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for the event log and read model: SQLite files, or one throwaway PostgreSQL schema for both."""
    if request.param == "sqlite":
        yield {}
        return
    if POSTGRES == "skip":
        pytest.skip("CDP_TEST_POSTGRES=skip")
    schema = f"test_identity_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield {
            "event_store": f"{POSTGRES}?schema={schema}",
            "read_model_url": f"{POSTGRES}?options=-csearch_path%3D{schema}",
        }
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


@pytest.fixture
async def harness(tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Harness]:
    async with running_harness(settings_for(tmp_path, **backend)) as running:
        yield running


@asynccontextmanager
async def running_harness(settings: Settings) -> AsyncIterator[Harness]:
    """Identity on loopback for these settings, and what a test needs to look behind it."""
    app, resolver = await assemble(settings)
    server = GrpcServer(app, settings, port=0)
    await server.start()
    store, keyring = resources.event_store(settings), resources.keyring(settings)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
            yield Harness(server, stub, resolver, store, keyring, resources.subject_ids(settings))
    finally:
        await server.stop()
        await store.close()
        keyring.close()
