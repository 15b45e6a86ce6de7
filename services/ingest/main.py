"""Composition root of ingest: settings → adapters → use cases → servicer → server."""

from __future__ import annotations

import asyncio

import structlog

from cdp.eventlog.group_commit import GroupCommitter
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.reactor import Reactor
from cdp.reactor.purge import Purges
from cdp.runtime import resources
from cdp.runtime.auth import Authenticator
from cdp.runtime.readiness import Readiness
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from services.ingest.application import Collector
from services.ingest.config_grpc import ConfigurationApi
from services.ingest.config_readmodel import ConfigView
from services.ingest.configuration import (
    AttributeCatalog,
    CsvImports,
    PlanEnforcer,
    TrackingPlans,
    flush_blocked,
    flush_blocked_forever,
)
from services.ingest.domain.tracking_plans import PlanBook
from services.ingest.grpc_api import ACCESS, SERVICE, IngestServicer
from services.ingest.http_api import HttpApi, HttpLimits
from services.ingest.readmodel import IngestState, consent_state

log = structlog.get_logger(__name__)

HOUSEKEEPING_SECONDS = 5.0
BLOCKED_FLUSH_SECONDS = 2.0
FINAL_FLUSH_ATTEMPTS = 5


async def build(settings: Settings, *, http_limits: HttpLimits | None = None) -> ServiceApp:
    """Wire the ingest service for these settings (the HTTP edge's load limits may be tightened in tests)."""
    store = resources.event_store(settings)
    keyring = resources.keyring(settings)
    engine = resources.read_model_engine(settings, "ingest")
    purges = Purges("ingest", IngestState.name, store, engine, [consent_state])
    state = IngestState(engine, on_erased=keyring.evict, purges=purges)
    runner = Reactor(store, state, engine)
    committer = GroupCommitter(store)
    # Tracking plans: compiled in memory from the log, refreshed by the config projection and by publishing.
    book = PlanBook()
    enforcer = PlanEnforcer(book)
    config_view = ConfigView(engine, on_plan=book.install)
    config_runner = Reactor(store, config_view, engine)
    plans = TrackingPlans(store, book)
    await plans.load_into_book()
    collector = Collector(committer, keyring, resources.subject_ids(settings), state, plans=enforcer)
    await runner.catch_up()  # consent and suppression are current before the first message
    await asyncio.to_thread(state.load)
    await config_runner.catch_up()
    catalog = AttributeCatalog(store)
    configuration = ConfigurationApi(plans, catalog, CsvImports(collector, catalog, store), config_view)

    async def flush_blocked_counts() -> None:
        await flush_blocked_forever(enforcer, config_view.add_blocked, BLOCKED_FLUSH_SECONDS)

    async def housekeeping() -> None:
        """Forget the in-memory consent changes the read model now holds; log what ingest did, when it changed."""
        reported: dict[str, int] = {}
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            collector.forget_projected(runner.position)
            counts = dict(collector.counters.by_status)
            if counts != reported:
                # Totals since start: accepted, duplicate, rejected, suppressed (dropped, never stored).
                log.info("ingest_counts", **counts)
                reported = counts

    async def close() -> None:
        committer.drain()
        # The background flush was cancelled and awaited (a write in progress finished); what is left of the
        # tally is written here, retried a few times: `make down` must not lose counts.
        for attempt in range(FINAL_FLUSH_ATTEMPTS):
            if await flush_blocked(enforcer, config_view.add_blocked):
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            log.error("blocked_counts_lost", counts=sum(count for _, count, _, _ in enforcer.drain()))
        await store.close()
        keyring.close()
        engine.dispose()

    readiness = Readiness()  # one answer for gRPC health and HTTP /health
    # The Segment HTTP API shares the collector (one set of rules, one group commit) and the event loop.
    http = HttpApi(
        collector,
        Authenticator(settings.source_keys(), settings.admin_token),
        host=settings.host,
        port=settings.http_port,
        limits=http_limits,
        grace_seconds=settings.grace_seconds,
        readiness=readiness,
    )

    add = ingest_service_pb2_grpc.add_IngestServiceServicer_to_server
    return ServiceApp(
        name="ingest",
        servicers=[(add, IngestServicer(collector, configuration), SERVICE.full_name)],
        access=ACCESS,
        background=[committer.run, housekeeping, http, flush_blocked_counts],
        on_stop=[close],
        reactors=[runner, config_runner],
        dependencies=resources.dependencies(store, engine),
        readiness=readiness,
    )
