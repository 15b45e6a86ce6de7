"""A running ingest with its HTTP edge, and a reusable load generator for POST /v1/batch.

`running_http_ingest` and `post_batches` are imported by the other HTTP tests and by benchmarks;
`python -m tests.integration.ingest.test_http_load` measures end-to-end throughput and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from multidict import CIMultiDictProxy

from cdp.eventlog import open_event_store
from cdp.ingest.v1 import ingest_service_pb2_grpc
from cdp.runtime import resources
from cdp.runtime.logging import configure_logging
from cdp.runtime.server import GrpcServer
from cdp.runtime.settings import Settings
from services.ingest.http_api import HttpLimits, http_edge
from services.ingest.main import build
from tests.integration.ingest.conftest import Ingest, settings_for

WEB_KEY = "web-key"
T = TypeVar("T")


def basic(key: str) -> dict[str, str]:
    """Segment's auth header: Basic with the write key as user name and no password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@dataclass
class HttpIngest:
    """A running ingest, its HTTP base URL and a client session."""

    ingest: Ingest
    url: str
    http: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any, *, headers: dict[str, str] | None = None, compress: bool = False
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        """POST a JSON body (Basic auth with the web key unless headers say otherwise): status, JSON, headers."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **basic(WEB_KEY), **(headers or {})}
        if compress:
            data = gzip.compress(data)
            sent["Content-Encoding"] = "gzip"
        async with self.http.post(self.url + path, data=data, headers=sent) as response:
            return response.status, await response.json(content_type=None), response.headers


@asynccontextmanager
async def running_http_ingest(
    data_dir: Path, *, limits: HttpLimits | None = None, settings: Settings | None = None
) -> AsyncIterator[HttpIngest]:
    """Ingest on loopback (gRPC and HTTP on free ports) over a SQLite log in `data_dir`."""
    settings = settings or settings_for(data_dir, CDP_HTTP_PORT="0")
    app = await build(settings, http_limits=limits)
    server = GrpcServer(app, settings, port=0)
    await server.start()
    port = await asyncio.wait_for(http_edge(app).started(), 10)
    log = open_event_store(settings.event_store)
    keyring = resources.keyring(settings)
    try:
        async with (
            grpc.aio.insecure_channel(server.address) as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            ingest = Ingest(server, stub, settings, log, keyring)
            yield HttpIngest(ingest, f"http://{settings.host}:{port}", session)
    finally:
        await server.stop()
        await log.close()
        keyring.close()


class ServerThread:
    """Ingest served from a thread with its own event loop, for blocking clients (SDKs, `requests`, hypothesis)."""

    def __init__(self, data_dir: Path, *, limits: HttpLimits | None = None) -> None:
        self._data_dir = data_dir
        self._limits = limits
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._running: HttpIngest | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._running is None:
            raise RuntimeError("ingest did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def url(self) -> str:
        """The HTTP API's base URL."""
        assert self._running is not None
        return self._running.url

    def run(self, work: Callable[[Ingest], Coroutine[Any, Any, T]]) -> T:
        """Run `work(ingest)` on the server's loop (reading the log back) and return its result."""
        assert self._running is not None and self._loop is not None
        return asyncio.run_coroutine_threadsafe(work(self._running.ingest), self._loop).result(60)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_http_ingest(self._data_dir, limits=self._limits) as running:
                self._running = running
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:
            self._error = error
            self._ready.set()
            raise


def track_batch(size: int, *, user_prefix: str = "load") -> dict[str, Any]:
    """A batch of `size` track messages the way analytics-python sends them."""
    return {
        "batch": [
            {
                "type": "track",
                "messageId": str(uuid.uuid4()),
                "userId": f"{user_prefix}-{index % 1000}",
                "event": "Product Viewed",
                "properties": {"sku": f"sku-{index}", "price": 19.99, "currency": "EUR"},
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "203.0.113.9"},
                "timestamp": "2026-01-01T00:00:00.000Z",
            }
            for index in range(size)
        ],
        "sentAt": "2026-01-01T00:00:01.000Z",
    }


@dataclass(frozen=True)
class LoadResult:
    """What a load run measured, end to end (acknowledged by the server)."""

    events: int
    seconds: float
    statuses: dict[int, int]

    @property
    def events_per_second(self) -> float:
        """Acknowledged events per wall-clock second."""
        return self.events / self.seconds


async def post_batches(
    url: str,
    write_key: str,
    *,
    batches: int,
    batch_size: int = 100,
    concurrency: int = 16,
    compress: bool = False,
) -> LoadResult:
    """POST `batches` batches of `batch_size` new track messages, `concurrency` at a time; count the answers.

    Bodies are built before the clock starts, so the figure is the server's (plus loopback HTTP).
    """
    bodies = [json.dumps(track_batch(batch_size)).encode() for _ in range(batches)]
    if compress:
        bodies = [gzip.compress(body) for body in bodies]
    headers = {"Content-Type": "application/json", **basic(write_key)}
    if compress:
        headers["Content-Encoding"] = "gzip"
    statuses: dict[int, int] = {}
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        for body in queue:
            async with session.post(url + "/v1/batch", data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(statuses.get(200, 0) * batch_size, seconds, statuses)


async def test_a_short_load_is_stored_whole(tmp_path: Path) -> None:
    async with running_http_ingest(tmp_path) as running:
        result = await post_batches(running.url, WEB_KEY, batches=20, batch_size=50, concurrency=4)
        assert result.statuses == {200: 20}
        assert len(await running.ingest.collected()) == 1000


async def _serve_and_measure(args: argparse.Namespace) -> None:
    """Serve in this process; generate the load from a child process so both get a core."""
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_for(Path(folder), CDP_HTTP_PORT="0")
        if args.event_store:
            settings = replace(settings, event_store=args.event_store)
        async with running_http_ingest(Path(folder), settings=settings) as running:
            await post_batches(running.url, WEB_KEY, batches=20, batch_size=args.batch_size)  # warm-up
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __spec__.name if __spec__ else "tests.integration.ingest.test_http_load",
                "--url",
                running.url,
                *_load_arguments(args),
                stdout=asyncio.subprocess.PIPE,
            )
            output, _ = await child.communicate()
            stored = len(await running.ingest.collected())
    result = json.loads(output)
    print(
        f"POST /v1/batch: {result['events']} events in {result['seconds']:.2f} s = "
        f"{result['events'] / result['seconds']:,.0f} events/s (batch {args.batch_size}, "
        f"concurrency {args.concurrency}, gzip {args.gzip}); statuses {result['statuses']}; "
        f"{stored} MessageCollected in the log (warm-up included)"
    )


def _load_arguments(args: argparse.Namespace) -> list[str]:
    flags = ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    flags += ["--concurrency", str(args.concurrency)]
    return [*flags, "--gzip"] if args.gzip else flags


async def _load(args: argparse.Namespace) -> None:
    result = await post_batches(
        args.url,
        args.write_key,
        batches=args.batches,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        compress=args.gzip,
    )
    print(json.dumps({"events": result.events, "seconds": result.seconds, "statuses": result.statuses}))


def main() -> None:
    """Measure HTTP ingest throughput end to end: acknowledged = validated, encrypted, durably appended."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument(
        "--event-store", default="", help="an event log URL instead of a temporary SQLite file"
    )
    parser.add_argument("--url", default="", help="only generate load against this running ingest HTTP API")
    parser.add_argument("--write-key", default=WEB_KEY, help="with --url: the write key to send")
    args = parser.parse_args()
    if args.url:
        asyncio.run(_load(args))
        return
    configure_logging("info", "json")  # the production renderer: one JSON line per request, on stderr
    asyncio.run(_serve_and_measure(args))


if __name__ == "__main__":
    main()
