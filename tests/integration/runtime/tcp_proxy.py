"""A TCP forwarder on loopback that a test can cut, stall and restore: a database outage without stopping it.

Point a service at the proxy instead of the real server (PostgreSQL on 127.0.0.1:5432 is shared by everyone on
the machine, so it is never stopped), then:
- `cut()`: every forwarded connection is reset and the port refuses new ones (the server crashed or restarts);
- `stall()`: every forwarded connection is reset, and new ones are accepted but never answered (a server that
  hangs, or a network that drops packets: only a client-side timeout ends the wait);
- `restore()`: forwarding again, on the same port.

The proxy runs its own event loop in a thread: a service that does blocking database calls on its loop (a
projection catching up at start-up) must not stop the proxy from forwarding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg

T = TypeVar("T")


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; see the module docstring for the failure modes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._forward = True
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    async def start(self) -> None:
        """Start the proxy's thread; listen on a free port and forward."""
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.call_soon(started.set)
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="tcp-proxy", daemon=True)
        self._thread.start()
        await asyncio.to_thread(started.wait)
        await self._in_thread(self._listen())

    async def cut(self) -> None:
        """Stop listening (connections are refused) and reset every forwarded connection."""
        await self._in_thread(self._cut())

    async def stall(self) -> None:
        """Reset every forwarded connection; accept new ones but never forward a byte on them."""
        await self._in_thread(self._stall())

    async def restore(self) -> None:
        """Forward again; the held connections of a stall are reset, so their clients reconnect."""
        await self._in_thread(self._restore())

    async def close(self) -> None:
        """Stop everything, the thread too."""
        await self._in_thread(self._close())
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)

    async def _in_thread(self, work: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def _listen(self) -> None:
        self._forward = True
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._reset_all()

    async def _stall(self) -> None:
        self._reset_all()
        self._forward = False
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _restore(self) -> None:
        self._reset_all()
        if self._server is None:
            await self._listen()
        self._forward = True

    async def _close(self) -> None:
        await self._cut()
        for pump in list(self._pumps):
            pump.cancel()
        for pump in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def _reset_all(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()  # RST, as when a server process dies
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)
        if not self._forward:
            return  # held: the client waits for an answer that never comes (until reset by restore)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links.add(upstream_writer)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink, (writer, upstream_writer)))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for end in pair:  # one side gone: the other goes too, as a TCP connection through a router would
                self._links.discard(end)
                end.transport.abort()


@asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """A started proxy to `target`, closed on exit."""
    proxy = TcpProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@dataclass(frozen=True)
class ProxiedPostgres:
    """A throwaway schema on a real PostgreSQL server, reached through `proxy`."""

    proxy: TcpProxy
    url: str
    """The server's URL with the proxy's address."""
    schema: str

    @property
    def event_store(self) -> str:
        """`CDP_EVENT_STORE` for an event log in the schema."""
        return f"{self.url}?schema={self.schema}"

    @property
    def read_model_url(self) -> str:
        """`CDP_READ_MODEL_URL` for read models in the schema."""
        return f"{self.url}?options=-csearch_path%3D{self.schema}"


@asynccontextmanager
async def postgres_behind_proxy(postgres: str) -> AsyncIterator[ProxiedPostgres]:
    """A new schema on the server `postgres` names and a proxy to that server; the schema is dropped on exit."""
    target = urlsplit(postgres)
    schema = f"test_outage_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            user = target.netloc.rpartition("@")[0]
            through = target._replace(netloc=f"{user}@127.0.0.1:{proxy.port}").geturl()
            yield ProxiedPostgres(proxy, through, schema)
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
