"""A TCP forwarder on loopback that a test can cut, stall and restore: a database outage without stopping it.

Point a service at the proxy instead of the real server (PostgreSQL on 127.0.0.1:5432 is shared by everyone on
the machine, so it is never stopped), then:
- `cut()`: every forwarded connection is reset and the port refuses new ones (the server crashed or restarts);
- `stall()`: every forwarded connection is reset, and new ones are accepted but never answered (a server that
  hangs, or a network that drops packets: only a client-side timeout ends the wait);
- `restore()`: forwarding again, on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; see the module docstring for the failure modes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._forward = True
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut) and forward."""
        self._forward = True
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening (connections are refused) and reset every forwarded connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._reset_all()

    async def stall(self) -> None:
        """Reset every forwarded connection; accept new ones but never forward a byte on them."""
        self._reset_all()
        self._forward = False
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def restore(self) -> None:
        """Forward again; the held connections of a stall are reset, so their clients reconnect."""
        self._reset_all()
        if self._server is None:
            await self.start()
        self._forward = True

    async def close(self) -> None:
        """Stop everything."""
        await self.cut()
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
