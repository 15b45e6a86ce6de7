"""The port and process probes of the local cluster, on real sockets and processes on loopback."""

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from cdp.runtime.cluster import Cluster, ServiceState, check_health
from cdp.runtime.logtail import last_lines
from cdp.runtime.ports import (
    TIME_WAIT,
    bind_error,
    free_ports,
    listening_inodes,
    listens_elsewhere,
    pids_holding,
    sockets_on,
)
from cdp.runtime.settings import SERVICES, Settings

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


def server_time_wait_port() -> int:
    """A port left in TIME_WAIT by a server (SO_REUSEADDR, as ours) that closed an accepted connection first."""
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


def client_time_wait_port(listener: socket.socket) -> int:
    """A port left in TIME_WAIT by an outgoing connection (no SO_REUSEADDR) that closed first."""
    (port,) = free_ports(1)
    client = socket.socket()
    client.bind(("127.0.0.1", port))  # what the kernel does when it picks this port as an ephemeral one
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    client.close()  # the active close: TIME_WAIT stays with the client's port
    accepted.recv(1)
    accepted.close()
    return port


def grpc_binds(port: int) -> bool:
    """Can a real gRPC server, with our servers' options, listen on `port` now?"""
    server = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    try:
        return server.add_insecure_port(f"127.0.0.1:{port}") == port
    except RuntimeError:
        return False
    finally:
        server.stop(None)


def in_time_wait(port: int) -> bool:
    return any(sock.state == TIME_WAIT for sock in sockets_on(port) or [])


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


def test_a_port_a_server_left_in_time_wait_is_free_as_it_is_for_grpc() -> None:
    port = server_time_wait_port()
    assert in_time_wait(port), "the test needs a TIME_WAIT socket on the port"
    assert plain_bind_error(port) == errno.EADDRINUSE, "without SO_REUSEADDR TIME_WAIT blocks a bind"
    assert bind_error("127.0.0.1", port) is None, (
        "the servers bind with SO_REUSEADDR: a restart is not refused"
    )
    assert listening_inodes(port) == set(), "TIME_WAIT is not a listener"
    assert grpc_binds(port)


def test_a_port_an_outgoing_connection_left_in_time_wait_is_taken_as_it_is_for_grpc(
    listener: socket.socket, tmp_path: Path
) -> None:
    port = client_time_wait_port(listener)
    assert in_time_wait(port), "the test needs a TIME_WAIT socket on the port"
    error = bind_error("127.0.0.1", port)
    assert error is not None and error.errno == errno.EADDRINUSE
    assert not grpc_binds(port), "the probe agrees with the server's own bind"
    env = {"CDP_DATA_DIR": str(tmp_path), "CDP_GOVERNANCE_PORT": str(port)}
    problems = Cluster(Settings.from_env(env)).port_problems(running=set(SERVICES) - {"governance"})
    server = f"127.0.0.1:{listener.getsockname()[1]}"
    assert problems == [
        f"CDP_GOVERNANCE_PORT={port} is in use by a closed connection to {server} in TIME_WAIT "
        "(an outgoing connection got this port; the kernel frees it within a minute)"
    ]


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


HEALTH_SERVER = """
import sys, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def impostors(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, int]]]:
    """A cluster whose pid files name real processes: `segments` serves health itself, `identity` does not."""
    ports = free_ports(len(SERVICES) + 1)
    env = {f"CDP_{name.upper()}_PORT": str(port) for name, port in zip(SERVICES, ports, strict=False)}
    env |= {"CDP_DATA_DIR": str(tmp_path), "CDP_HTTP_PORT": str(ports[-1])}
    cluster = Cluster(Settings.from_env(env))
    # The service name in argv is what the cluster's command-line check looks for.
    serving = subprocess.Popen(
        [sys.executable, "-c", HEALTH_SERVER, env["CDP_SEGMENTS_PORT"], "services.segments"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    silent = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "services.identity"], stdin=subprocess.PIPE
    )
    assert serving.stdout is not None and serving.stdout.readline().strip() == "ready"
    cluster.run_dir.mkdir(parents=True)
    for name, process in (("segments", serving), ("identity", silent)):
        (cluster.run_dir / f"{name}.pid").write_text(str(process.pid))
    yield cluster, {"segments": serving.pid, "identity": silent.pid}
    for process in (serving, silent):
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def test_a_health_check_answered_by_another_process_is_not_our_service_serving(
    impostors: tuple[Cluster, dict[str, int]],
) -> None:
    cluster, pids = impostors
    identity_port = cluster.settings.port_of("identity")
    other = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), other)
    other.add_insecure_port(f"127.0.0.1:{identity_port}")
    other.start()
    try:
        assert check_health(f"127.0.0.1:{identity_port}") == "SERVING", (
            "someone does answer at identity's port"
        )
        states = {state.name: state for state in cluster.status()}
    finally:
        other.stop(None)
    assert states["segments"] == ServiceState(
        "segments", pids["segments"], f"127.0.0.1:{cluster.settings.port_of('segments')}", "SERVING"
    ), "its own process holds the socket that answers"
    assert states["identity"].health == "UNREACHABLE"
    assert states["identity"].detail.startswith(f"port {identity_port} is held by pid {os.getpid()} (")
    assert [states[name].health for name in ("ingest", "ingest-http", "activation", "governance")] == [
        "STOPPED"
    ] * 4
