"""A real ingest server on loopback, over a SQLite event log in a temporary data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cdp.common.v1 import message_pb2
from cdp.eventlog import EventStore, open_event_store
from cdp.eventlog.port import EventFilter
from cdp.events import EventMetadata, MessageCollected, from_recorded
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.keyring import Keyring
from cdp.runtime import resources
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.ingest.main import build

WRITE_KEY = (("authorization", "Bearer web-key"),)


@dataclass
class Ingest:
    """A running ingest service and what a test needs to look behind it."""

    server: GrpcServer
    stub: ingest_service_pb2_grpc.IngestServiceAsyncStub
    settings: Settings
    log: EventStore
    keyring: Keyring

    async def collected(self) -> list[MessageCollected]:
        """Every MessageCollected in the log, in order."""
        events = await self.log.read_all(filter=EventFilter(event_types=("MessageCollected",)))
        return [event for event in map(from_recorded, events) if isinstance(event, MessageCollected)]

    async def settled(self) -> None:
        """Wait until every read model of ingest has followed the log up to its current head."""
        head = await self.log.head_position()
        for reactor in self.server.app.reactors:
            await reactor.wait_for(head, within=60)

    def subject(self, kind: str, value: str) -> str:
        return resources.subject_ids(self.settings)(kind, value)

    async def append_as_governance(self, stream: str, event: Any) -> None:
        await self.log.append(stream, [event.to_new_event(EventMetadata(actor="admin"))])


def settings_for(data_dir: Path, **overrides: str) -> Settings:
    env = {
        "CDP_DATA_DIR": str(data_dir),
        "CDP_WRITE_KEYS": "web:web-key,ios:ios-key",
        "CDP_HTTP_PORT": "0",  # tests never take the well-known port
        **overrides,
    }
    return replace(Settings.from_env(env), grace_seconds=0.5)


@asynccontextmanager
async def running_ingest(settings: Settings) -> AsyncIterator[Ingest]:
    server = GrpcServer(await build(settings), settings, port=0)
    await server.start()
    log = open_event_store(settings.event_store)
    keyring = resources.keyring(settings)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Ingest(server, ingest_service_pb2_grpc.IngestServiceStub(channel), settings, log, keyring)
    finally:
        await server.stop()
        await log.close()
        keyring.close()


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[Ingest]:
    async with running_ingest(settings_for(tmp_path)) as running:
        yield running


def message(kind: int = message_pb2.MESSAGE_TYPE_TRACK, **fields: Any) -> message_pb2.Message:
    """A protobuf message from Segment-style JSON fields (`userId`, `properties`…)."""
    return json_format.ParseDict(
        {"type": message_pb2.MessageType.Name(kind), **fields}, message_pb2.Message()
    )
