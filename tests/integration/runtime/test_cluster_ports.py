"""The port probes `cdp up` runs before it spawns anything, on real sockets and processes on loopback."""

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdp.runtime.cluster import Cluster
from cdp.runtime.logtail import last_lines
from cdp.runtime.ports import bind_error, listening_inodes, listens_elsewhere, pids_holding
from cdp.runtime.settings import SERVICES, Settings
from tests.e2e.conftest import free_ports

LISTENER = """
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


@pytest.fixture
def other_process_port() -> Iterator[tuple[int, int]]:
    """A port another (real) process listens on, and that process's pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    port = int(child.stdout.readline())
    yield port, child.pid
    child.stdin.close()
    child.wait(timeout=30)


def time_wait_port() -> int:
    """A port whose only socket is in TIME_WAIT: the server side closed an accepted connection first."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = int(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the active close: TIME_WAIT stays with the server's port
    client.recv(1)
    client.close()
    server.close()
    return port


def plain_bind_error(port: int) -> int | None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            return error.errno
    return None


def test_a_free_port_binds_and_a_listening_one_does_not(listener: socket.socket) -> None:
    (free,) = free_ports(1)
    assert bind_error("127.0.0.1", free) is None
    taken = bind_error("127.0.0.1", listener.getsockname()[1])
    assert taken is not None and taken.errno == errno.EADDRINUSE


def test_a_port_in_time_wait_is_not_reported_taken() -> None:
    port = time_wait_port()
    states = [
        line.split()[3]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if int(line.split()[1].rsplit(":", 1)[1], 16) == port
    ]
    assert "06" in states, "the test needs a TIME_WAIT socket on the port"
    assert plain_bind_error(port) == errno.EADDRINUSE, "without SO_REUSEADDR TIME_WAIT blocks a bind"
    assert bind_error("127.0.0.1", port) is None, (
        "the servers bind with SO_REUSEADDR: TIME_WAIT is no obstacle"
    )
    assert listening_inodes(port) == set(), "TIME_WAIT is not a listener"


def test_the_process_listening_on_a_port_is_found(
    listener: socket.socket, other_process_port: tuple[int, int]
) -> None:
    own_port = listener.getsockname()[1]
    assert pids_holding(listening_inodes(own_port) or set()) == [os.getpid()]
    assert not listens_elsewhere(os.getpid(), own_port)
    port, pid = other_process_port
    assert pids_holding(listening_inodes(port) or set()) == [pid]
    assert listens_elsewhere(os.getpid(), port), "another process answers at that port, not us"
    (free,) = free_ports(1)
    assert not listens_elsewhere(os.getpid(), free)


def test_port_problems_name_each_setting_and_who_holds_its_port(
    tmp_path: Path, other_process_port: tuple[int, int]
) -> None:
    held, pid = other_process_port
    ports = free_ports(len(SERVICES))
    env = {f"CDP_{name.upper()}_PORT": str(port) for name, port in zip(SERVICES, ports, strict=True)}
    env |= {"CDP_DATA_DIR": str(tmp_path), "CDP_SEGMENTS_PORT": str(held), "CDP_HTTP_PORT": str(ports[0])}
    problems = Cluster(Settings.from_env(env)).port_problems()
    assert (
        problems[0]
        == f"CDP_INGEST_PORT and CDP_HTTP_PORT are all {ports[0]}: every server needs its own port"
    )
    assert problems[1].startswith(f"CDP_SEGMENTS_PORT={held} is in use by pid {pid} (")
    assert len(problems) == 2
    assert Cluster(Settings.from_env(env)).port_problems(running={"segments"}) == problems[:1], (
        "a port held by this cluster's own running service is no problem"
    )


def test_the_log_tail_starts_where_this_start_began_and_never_mid_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old run\n")
    since = log.stat().st_size
    log.write_text("old run\n" + "".join(f"line {n}\n" for n in range(1000)))
    assert last_lines(log, since=since)[:2] == ["line 0", "line 1"]
    tail = last_lines(log, since=since, max_bytes=100)
    assert tail[-1] == "line 999" and all(line.startswith("line ") for line in tail)
    assert len(tail) < 1000
    assert last_lines(tmp_path / "missing.log") == []
