"""TCP ports of the local cluster: can a server bind this port, and which process listens on it.

The bind probe sets the options our servers set: gRPC core and aiohttp (asyncio's `create_server`) both bind
with SO_REUSEADDR and, here, without SO_REUSEPORT (`grpc.so_reuseport` is 0), so it fails exactly when the
servers' bind would. A listening socket makes it fail with EADDRINUSE. A connection a server closed stays in
TIME_WAIT with the listener's SO_REUSEADDR, which lets the next bind through: a cluster restarted at once is not
refused. But the ports we use lie in Linux's ephemeral range (32768-60999), and an outgoing connection of any
program (a PostgreSQL client, say) that got one of them and closed first leaves a TIME_WAIT *without*
SO_REUSEADDR: that one does block the servers for up to a minute, so the probe reports it, and says so.

Who listens is read from Linux's /proc: `/proc/net/tcp{,6}` maps a listening port to socket inodes and
`/proc/<pid>/fd` maps a process to the inodes it holds. Other users' descriptors cannot be read, so an answer
of "nobody we can see" is not proof that the port is free; elsewhere than on Linux the lookups know nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"
TIME_WAIT = "06"
_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not bind `host:port` now (`None`: it could); an unresolvable host is a gaierror."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return error
    errors = [_try_bind(family, address) for family, _, _, _, address in addresses]
    in_use = [error for error in errors if error is not None and error.errno == errno.EADDRINUSE]
    # A name such as `localhost` may resolve to ::1 too; the servers bind whatever they can, so only a port in
    # use on one of the addresses, or no address bindable at all, is a problem.
    if in_use:
        return in_use[0]
    return errors[0] if errors and all(errors) else None


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/net/tcp{,6}: a socket using a local port."""

    port: int
    remote: str
    """`address:port` of the peer (`0.0.0.0:0` for a listener)."""

    state: str
    """The kernel's state code: `0A` LISTEN, `06` TIME_WAIT, `01` ESTABLISHED, …"""

    inode: int
    """0 for a TIME_WAIT socket, which no process holds any more."""


def sockets_on(port: int) -> list[TcpSocket] | None:
    """Every TCP socket whose local port is `port`, in any state (`None`: this system has no /proc/net/tcp)."""
    found: list[TcpSocket] = []
    readable = False
    for table in _TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            columns = line.split()
            if len(columns) > 9 and int(columns[1].rsplit(":", 1)[1], 16) == port:
                found.append(TcpSocket(port, _address(columns[2]), columns[3], int(columns[9])))
    return found if readable else None


def listening_inodes(port: int) -> set[int] | None:
    """Inodes of the sockets listening on `port` on any address (`None`: this system has no /proc/net/tcp)."""
    found = sockets_on(port)
    return None if found is None else {sock.inode for sock in found if sock.state == LISTEN}


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds (empty when its descriptors cannot be read)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def pids_holding(inodes: set[int]) -> list[int]:
    """Every process whose descriptors we can read that holds one of these sockets, in pid order."""
    if not inodes:
        return []
    holders = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and socket_inodes(int(entry.name)) & inodes:
                holders.append(int(entry.name))
    return sorted(holders)


def listens_elsewhere(pid: int, port: int) -> bool:
    """True when something listens on `port` and none of it is process `pid` (False when we cannot tell)."""
    inodes = listening_inodes(port)
    return inodes is not None and bool(inodes) and not inodes & socket_inodes(pid)


def _try_bind(family: int, address: tuple[object, ...]) -> OSError | None:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:  # e.g. no IPv6 on this machine
        return error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # As asyncio does; on a dual-stack socket a v4 listener would make a v6 probe fail too.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as error:
        return error
    finally:
        sock.close()
    return None


def _address(hex_address: str) -> str:
    """`0100007F:1538` (32-bit words in the kernel's byte order) as `127.0.0.1:5432`."""
    host, port = hex_address.rsplit(":", 1)
    raw = bytes.fromhex(host)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
    text = socket.inet_ntop(family, packed).removeprefix("::ffff:")  # a v4-mapped peer reads as v4
    return f"[{text}]:{int(port, 16)}" if ":" in text else f"{text}:{int(port, 16)}"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nobody listens on right now (bound together, so they differ): for clusters in tests and benches."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind((host, 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports
