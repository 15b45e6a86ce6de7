"""Composition root of governance: settings → adapters → consent and request reactors, worker, servicer → server."""

from __future__ import annotations

import asyncio

import grpc

from cdp.common.v1 import identity_pb2
from cdp.governance.v1 import governance_service_pb2_grpc
from cdp.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from cdp.reactor import Reactor
from cdp.runtime import resources
from cdp.runtime.server import ServiceApp
from cdp.runtime.settings import Settings
from cdp.sqlengine import create_tables
from services.governance.application import RequestDesk
from services.governance.consent import build_consent
from services.governance.directory import Directory, identity_lookup
from services.governance.grpc_api import SERVICE, GovernanceServicer
from services.governance.request_rpcs import RequestRpcs
from services.governance.requests import RequestLedger, RequestQueries
from services.governance.worker import DecisionReader, ProfileReader, RequestWorker


async def build(settings: Settings) -> ServiceApp:
    """Wire the governance service for these settings; its reactors and request worker run with the server."""
    service, _ = await assemble(settings)
    return service


async def assemble(settings: Settings) -> tuple[ServiceApp, RequestDesk]:
    """The service, and its request desk (which tests and benches drive directly)."""
    store = resources.event_store(settings)
    keyring = resources.keyring(settings)
    engine = resources.read_model_engine(settings, "governance")
    channel = grpc.aio.insecure_channel(f"{settings.host}:{settings.identity_port}")
    directory = Directory(
        identity_lookup(channel, settings.admin_token, settings.dependency_timeout_seconds),
        resources.subject_ids(settings),
    )
    consent_reactor, consent_rpcs = await build_consent(settings, store, engine, directory)
    ledger = Reactor(store, RequestLedger(), engine)
    await asyncio.to_thread(create_tables, RequestLedger.metadata, engine)  # the worker may look before it
    queries = RequestQueries(engine)
    profiles = profile_reader(channel, settings.admin_token, settings.dependency_timeout_seconds)
    decisions = decision_reader(channel, settings.admin_token, settings.dependency_timeout_seconds)
    worker = RequestWorker(store, keyring, queries, ledger, profiles, settings.erasure_purgers, decisions)
    desk = RequestDesk(store, keyring, directory, queries, ledger, worker)

    async def stop() -> None:
        await channel.close(None)
        await store.close()
        await asyncio.to_thread(keyring.close)
        engine.dispose()

    add = governance_service_pb2_grpc.add_GovernanceServiceServicer_to_server
    service = ServiceApp(
        name="governance",
        servicers=[(add, GovernanceServicer(consent_rpcs, RequestRpcs(desk)), SERVICE.full_name)],
        background=[worker.run, worker.listen],
        on_stop=[stop],
        reactors=[consent_reactor, ledger],
        dependencies=resources.dependencies(store, engine),
    )
    return service, desk


def profile_reader(channel: grpc.aio.Channel, token: str, timeout: float) -> ProfileReader:
    """A profile id → identity's whole profile (for access exports); None when identity does not know it."""
    lookup = identity_lookup(channel, token, max(timeout, 10.0), fields=())

    async def read(profile_id: str) -> identity_service_pb2.Profile | None:
        return await lookup(identity_pb2.ProfileRef(profile_id=profile_id))

    return read


def decision_reader(channel: grpc.aio.Channel, token: str, timeout: float) -> DecisionReader:
    """A profile id → every identity decision about it (GetMergeHistory, all pages); [] when identity does not
    know it."""
    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def read(profile_id: str) -> list[identity_service_pb2.IdentityDecision]:
        found: list[identity_service_pb2.IdentityDecision] = []
        token_ = ""
        while True:
            request = identity_service_pb2.GetMergeHistoryRequest(
                profile=identity_pb2.ProfileRef(profile_id=profile_id)
            )
            request.page.page_size, request.page.page_token = 1000, token_
            try:
                reply = await stub.GetMergeHistory(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=max(timeout, 10.0)
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return found
                raise
            found.extend(reply.decisions)
            token_ = reply.page.next_page_token
            if not token_:
                return found

    return read
