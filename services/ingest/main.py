"""Composition root of ingest: settings → adapters → use cases → servicer → server."""

from __future__ import annotations

import asyncio

from cdp.eventlog.group_commit import GroupCommitter
from cdp.eventlog.projection import ProjectionRunner
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.runtime import resources
from cdp.runtime.auth import Authenticator
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.ingest.application import Collector
from services.ingest.grpc_api import ACCESS, SERVICE, IngestServicer
from services.ingest.http_api import HttpApi, HttpLimits
from services.ingest.readmodel import IngestState

HOUSEKEEPING_SECONDS = 5.0


async def build(settings: Settings, *, http_limits: HttpLimits | None = None) -> ServiceApp:
    """Wire the ingest service for these settings (the HTTP edge's load limits may be tightened in tests)."""
    store = resources.event_store(settings)
    keyring = resources.keyring(settings)
    engine = resources.read_model_engine(settings, "ingest")
    state = IngestState(engine)
    runner = ProjectionRunner(store, state, engine)
    committer = GroupCommitter(store)
    collector = Collector(committer, keyring, resources.subject_ids(settings), state)
    await runner.catch_up()  # dedupe, consent and suppression are current before the first message

    async def housekeeping() -> None:
        """Forget in-memory appends the read model holds, and dedupe entries past their window."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            collector.forget_projected(runner.position)
            await asyncio.to_thread(state.forget_older_than)

    async def close() -> None:
        committer.drain()
        await store.close()
        keyring.close()
        engine.dispose()

    # The Segment HTTP API shares the collector (one set of rules, one group commit) and the event loop.
    http = HttpApi(
        collector,
        Authenticator(settings.source_keys(), settings.admin_token),
        host=settings.host,
        port=settings.http_port,
        limits=http_limits,
        grace_seconds=settings.grace_seconds,
    )

    add = ingest_service_pb2_grpc.add_IngestServiceServicer_to_server
    return ServiceApp(
        name="ingest",
        servicers=[(add, IngestServicer(collector), SERVICE.full_name)],
        access=ACCESS,
        background=[committer.run, housekeeping, http],
        on_stop=[close],
        projections=[runner],
    )
