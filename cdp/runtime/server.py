"""The gRPC server every service runs: health, reflection, limits, the edge interceptor, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cdp.faults import describe
from cdp.ops.v1 import ops_service_pb2_grpc
from cdp.reactor import Reactor
from cdp.runtime.auth import Access, Authenticator
from cdp.runtime.interceptor import EdgeInterceptor
from cdp.runtime.logging import configure_logging
from cdp.runtime.ops import SERVICE as OPS_SERVICE
from cdp.runtime.ops import OpsServicer
from cdp.runtime.readiness import Probe, Readiness, watch
from cdp.runtime.settings import Settings

log = structlog.get_logger("cdp.server")

LAG_REPORT_SECONDS = 30.0


@dataclass
class ServiceApp:
    """What a service's composition root hands the runtime: servicers, access rules, lifecycle hooks."""

    name: str
    """Short service name (`ingest`), bound to every log line."""

    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]] = field(default_factory=list)
    """`(add_XServicer_to_server, servicer, full service name)` triples."""

    access: Mapping[str, Access] = field(default_factory=dict)
    """Required access per full method path; methods not listed need the admin token."""

    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Long-running tasks (the HTTP edge, timers) started with the server, cancelled at shutdown."""

    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Clean-ups run after the server stopped (close the event store, dispose engines)."""

    reactors: list[Reactor] = field(default_factory=list)
    """The service's reactors (policies and projections following the log): started with the server, stopped
    at shutdown, their lag logged and served by `cdp.ops.v1.OpsService`."""

    dependencies: Mapping[str, Probe] = field(default_factory=dict)
    """What the service cannot serve without, by name (`"event log"`: a cheap read of it): probed every second,
    each bounded by `CDP_DEPENDENCY_TIMEOUT_SECONDS`; while one fails, health answers NOT_SERVING."""

    readiness: Readiness = field(default_factory=Readiness)
    """Whether the service can serve now; the gRPC health service publishes it, and so may an HTTP edge."""


def method_access(service: ServiceDescriptor, methods: Iterable[str], access: Access) -> dict[str, Access]:
    """`{"/pkg.Service/Method": access}` for the named methods, checking each exists in the contract."""
    known = {method.name for method in service.methods}
    unknown = set(methods) - known
    if unknown:
        raise ValueError(f"{service.full_name} has no methods {sorted(unknown)}")
    return {f"/{service.full_name}/{name}": access for name in methods}


class GrpcServer:
    """A started `ServiceApp`: call `start`, then `stop` (or `run_until_signal`)."""

    def __init__(self, app: ServiceApp, settings: Settings, *, port: int | None = None) -> None:
        self.app = app
        self.settings = settings
        self._requested_port = settings.port_of(app.name) if port is None else port
        self.port = 0
        self.health = health_aio.HealthServicer()
        self._names: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        authenticator = Authenticator(settings.source_keys(), settings.admin_token)
        limits = settings.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=[EdgeInterceptor(app.name, authenticator, app.access)],
            options=[
                ("grpc.max_receive_message_length", limits),
                ("grpc.max_send_message_length", limits),
                ("grpc.so_reuseport", 0),
            ],
        )

    @property
    def address(self) -> str:
        """`host:port` the server listens on."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Bind, serve, report SERVING, start background tasks."""
        ops = OpsServicer(self.app.name, self.app.reactors, datetime.now(UTC))
        servicers = [
            *self.app.servicers,
            (ops_service_pb2_grpc.add_OpsServiceServicer_to_server, ops, OPS_SERVICE.full_name),
        ]
        names = [full_name for _, _, full_name in servicers]
        for add, servicer, _ in servicers:
            add(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self._requested_port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.host}:{self._requested_port}")
        await self.server.start()
        jobs = [*self.app.background, *(reactor.run for reactor in self.app.reactors)]
        if self.app.reactors:
            jobs.append(self._report_lag)
        if self.app.dependencies:
            jobs.append(self._watch_dependencies)
        self._names = names
        self._tasks = [asyncio.create_task(self._guard(job)) for job in jobs]
        await self._publish()
        log.info("server_started", service=self.app.name, address=self.address, services=names)

    async def _publish(self) -> None:
        """Health answers what `app.readiness` says, for the server as a whole and each of its services."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.app.readiness.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names]:
            await self.health.set(name, status)

    async def _watch_dependencies(self) -> None:
        await watch(
            self.app.dependencies,
            self.app.readiness,
            bound=self.settings.dependency_timeout_seconds,
            on_change=self._publish,
        )

    async def stop(self) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then clean up."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for clean_up in self.app.on_stop:
            await clean_up()
        log.info("server_stopped", service=self.app.name)

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        try:
            await stopping.wait()
        finally:
            log.info("server_draining", service=self.app.name, grace_seconds=self.settings.grace_seconds)
            await self.stop()

    async def _report_lag(self, every: float = LAG_REPORT_SECONDS) -> None:
        """Log each reactor's lag (head - checkpoint); a failed reactor takes the service out of SERVING."""
        while True:
            await asyncio.sleep(every)
            for reactor in self.app.reactors:
                status = await reactor.status()
                log.info("reactor_status", **dataclasses.asdict(status))
                if status.state == "failed":
                    self.app.readiness.mark_failed(f"reactor {status.name}", status.last_error or "failed")
                    await self._publish()

    async def _guard(self, job: Callable[[], Awaitable[None]]) -> None:
        """A background task that dies takes the service out of SERVING rather than failing silently."""
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("background_task_failed", service=self.app.name)
            self.app.readiness.mark_failed(getattr(job, "__qualname__", repr(job)), describe(error))
            await self._publish()


def run_service(build: Callable[[Settings], Awaitable[ServiceApp]]) -> None:
    """The body of every `python -m services.<name>`: settings, logging, build the app, serve until a signal."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if settings.extra:
        log.warning("unknown_settings_ignored", variables=sorted(settings.extra))

    async def main() -> None:
        app = await build(settings)
        await GrpcServer(app, settings).run_until_signal()

    asyncio.run(main())
