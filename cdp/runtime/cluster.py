"""The local cluster: five service processes on the embedded default, supervised by pid files.

A small supervisor of our own rather than supervisor/honcho: `make up` must return once every service answers
SERVING (honcho stays in the foreground; supervisord is a daemon with its own config language and socket), and
`make down` must stop exactly what `make up` started, which pid files plus a command-line check give us.
It does not restart crashed services: a pid file whose process is gone is kept, so `make status` shows the
service DEAD with the log line that says why, until `make down` or the next `make up` clears it.

A health check only says that *something* answers at a port, possibly another cluster on the same ports, so
`up` refuses ports it does not hold before it spawns anything, and a service counts as SERVING only while its
own process is alive and holds the socket that answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cdp.runtime.logtail import last_lines, readable, reason
from cdp.runtime.ports import LISTEN, TIME_WAIT, bind_error, listens_elsewhere, pids_holding, sockets_on
from cdp.runtime.secrets import ensure_local_secrets
from cdp.runtime.settings import SERVICES, Settings

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"
"""The process is alive but does not answer at its port (starting, stuck, or the port is someone else's)."""
DEAD = "DEAD"
"""A pid file whose process is gone: the service crashed or was killed."""
STOPPED = "STOPPED"
"""No pid file: never started, or stopped by `down`."""

SHOWN_LOG_LINES = 8


@dataclass(frozen=True)
class ServiceState:
    """One row of `status`: a server of the cluster and what it answers."""

    name: str
    """`ingest`, …, `governance`, or `ingest-http` for ingest's HTTP API."""

    pid: int | None
    """The process in the pid file, alive or not."""

    address: str
    """`host:port` the server listens on."""

    health: str
    """SERVING, NOT_SERVING, UNREACHABLE, DEAD or STOPPED."""

    detail: str = ""
    """Why it is not SERVING, when we can tell: the log line of a dead service, who holds its port."""

    reactors: tuple[ReactorLine, ...] = ()
    """The server's reactors, as `cdp.ops.v1.OpsService` reports them (none for ingest's HTTP row)."""


@dataclass(frozen=True)
class ReactorLine:
    """One reactor of a server: how it keeps up with the log."""

    name: str
    state: str
    lag: int
    parked: int
    events_per_second: float
    last_error: str


@dataclass(frozen=True)
class Endpoint:
    """A port the cluster listens on, the service process behind it and the setting that chooses it."""

    name: str
    """The row's name in `status`."""

    service: str
    """The service whose process listens here."""

    variable: str
    """The setting that chooses the port (`CDP_SEGMENTS_PORT`)."""

    port: int
    """The port."""

    probe: Callable[[str], str]
    """The health check for `host:port`: gRPC health, or ingest's HTTP `/health`."""


@dataclass(frozen=True)
class _Started:
    """A process this `up` spawned, and where its log stood when it started."""

    process: subprocess.Popen[bytes]
    log_offset: int


class ClusterError(RuntimeError):
    """The cluster could not be brought up; the message says why, ready for the terminal."""


class Cluster:
    """Starts, checks and stops the services, keeping pid files and logs under `<data dir>/run` and `/logs`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.run_dir = settings.data_dir / "run"
        self.log_dir = settings.data_dir / "logs"

    def endpoints(self) -> list[Endpoint]:
        """The five gRPC servers and ingest's HTTP API, in `status` order."""
        grpc_servers = [
            Endpoint(name, name, f"CDP_{name.upper()}_PORT", self.settings.port_of(name), check_health)
            for name in SERVICES
        ]
        http = Endpoint("ingest-http", "ingest", "CDP_HTTP_PORT", self.settings.http_port, check_http)
        return [grpc_servers[0], http, *grpc_servers[1:]]

    def up(self, timeout: float = 90.0) -> list[ServiceState]:
        """Start every service that is not running, on free ports only, then wait until all answer SERVING."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        running = {name for name in SERVICES if self._running_pid(name) is not None}
        problems = self.port_problems(running)
        if problems:
            raise ClusterError(
                "nothing started; the servers cannot listen where the settings say:\n"
                + "".join(f"  {problem}\n" for problem in problems)
                + "Stop what holds them (another cluster: `make down` where it runs) or choose other ports."
            )
        secrets = ensure_local_secrets(self.settings)
        started = {name: self._spawn(name, secrets) for name in SERVICES if name not in running}
        self._wait_serving(started, timeout)
        return self.status()

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop exactly the processes `up` started (SIGTERM, then SIGKILL after `timeout`); forget dead ones.

        Each service runs in a session of its own (`start_new_session`), so what is left of that session once the
        service has ended (a worker or resource tracker orphaned by a kill -9, even of an earlier run) is killed too.
        """
        stopped, sessions = [], []
        for name in SERVICES:
            recorded = self._recorded_pid(name)
            if recorded is not None:
                sessions.append(recorded)
            pid = self._running_pid(name)
            if pid is None:
                continue
            _signal(pid, signal.SIGTERM)
            stopped.append((name, pid))
        deadline = time.monotonic() + timeout
        for _, pid in stopped:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for session in sessions:
            for leftover in session_members(session):
                _signal(leftover, signal.SIGKILL)
        for name in SERVICES:
            self._pid_file(name).unlink(missing_ok=True)
        return [name for name, _ in stopped]

    def status(self) -> list[ServiceState]:
        """One row per server: its pid, address and state (SERVING, NOT_SERVING, UNREACHABLE, DEAD, STOPPED)."""
        return [self._with_reactors(e, self._state(e)) for e in self.endpoints()]

    def port_problems(self, running: Collection[str] = ()) -> list[str]:
        """Why the servers of the services not `running` could not listen where the settings say, one per line."""
        problems = _shared_ports(self.endpoints())
        for endpoint in self.endpoints():
            if endpoint.service not in running and (problem := self._port_problem(endpoint)):
                problems.append(problem)
        return problems

    def _port_problem(self, endpoint: Endpoint) -> str | None:
        setting, host = f"{endpoint.variable}={endpoint.port}", self.settings.host
        if not 0 < endpoint.port <= 65535:
            return f"{setting}: the cluster needs a fixed TCP port"
        error = bind_error(host, endpoint.port)
        if error is None:
            return None
        if isinstance(error, socket.gaierror):
            return f"{setting}: CDP_HOST={host} cannot be resolved ({error.strerror})"
        if error.errno == errno.EADDRINUSE:
            return f"{setting} is in use by {_holder(endpoint.port)}"
        return f"{setting} cannot be bound on {host}: {error.strerror or error}"

    def _state(self, endpoint: Endpoint) -> ServiceState:
        address = f"{self.settings.host}:{endpoint.port}"
        pid = self._recorded_pid(endpoint.service)
        if pid is None:
            return ServiceState(endpoint.name, None, address, STOPPED)
        if not _is_service(endpoint.service, pid):
            return ServiceState(endpoint.name, pid, address, DEAD, self._why_dead(endpoint))
        if listens_elsewhere(pid, endpoint.port):
            held = f"port {endpoint.port} is held by {_holder(endpoint.port)}"
            return ServiceState(endpoint.name, pid, address, UNREACHABLE, held)
        return ServiceState(endpoint.name, pid, address, endpoint.probe(address))

    def _with_reactors(self, endpoint: Endpoint, state: ServiceState) -> ServiceState:
        """The row with its server's reactors, when the server answers (not for ingest's HTTP row)."""
        if endpoint.name != endpoint.service or state.health not in (SERVING, NOT_SERVING):
            return state
        return replace(state, reactors=reactor_lines(state.address, self.settings.admin_token))

    def _why_dead(self, endpoint: Endpoint) -> str:
        if endpoint.name != endpoint.service:  # ingest's HTTP API: its process's row says it
            return f"see {endpoint.service}"
        return reason(readable(last_lines(self._log_file(endpoint.service))))

    def _spawn(self, name: str, secrets: Mapping[str, str]) -> _Started:
        log_path = self._log_file(name)
        env = {
            **self.environ,
            **secrets,
            "CDP_DATA_DIR": str(self.settings.data_dir),
            "CDP_LOG_FORMAT": "json",
        }
        with log_path.open("ab") as log_file:
            offset = log_file.tell()
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal that ran `make up` must not reach the services
            )
        self._pid_file(name).write_text(str(process.pid))
        return _Started(process, offset)

    def _wait_serving(self, started: Mapping[str, _Started], timeout: float) -> None:
        """Return once every server is SERVING; fail at once when a service's process is gone."""
        deadline = time.monotonic() + timeout
        waiting = self.endpoints()
        while True:
            states = [self._state(endpoint) for endpoint in waiting]
            self._fail_if_gone(started, zip(waiting, states, strict=True))
            late = [(e, state) for e, state in zip(waiting, states, strict=True) if state.health != SERVING]
            if not late:
                return
            if time.monotonic() > deadline:
                raise ClusterError(self._too_slow([state for _, state in late], started, timeout))
            waiting = [endpoint for endpoint, _ in late]
            time.sleep(0.2)

    def _fail_if_gone(
        self, started: Mapping[str, _Started], states: Iterable[tuple[Endpoint, ServiceState]]
    ) -> None:
        """Raise when a process this `up` spawned has exited, or a service that was running is DEAD."""
        # Polled after the states were taken, so any death a state saw is seen here with its exit code.
        for name, start in started.items():
            code = start.process.poll()
            if code is not None:
                raise ClusterError(self._exited(name, code, start.log_offset))
        for endpoint, state in states:
            if state.health != DEAD:
                continue
            spawned = started.get(endpoint.service)
            if spawned is None:  # it ran before this `up`: its exit code is not ours to know
                raise ClusterError(self._exited(endpoint.service, None, 0))
            # Ours, seen dead while still exiting (its command line is gone before it is a zombie): reap it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = spawned.process.wait(timeout=10)
                raise ClusterError(self._exited(endpoint.service, code, spawned.log_offset))

    def _exited(self, name: str, code: int | None, log_offset: int) -> str:
        """What the terminal shows when a service's process ended during start-up."""
        how = "" if code is None else f" with {_exit_status(code)}"
        return (
            f"{name} exited during start-up{how}; the end of {self._log_file(name)} says:\n"
            + self._log_excerpt(name, log_offset)
            + "The services that started keep running: `make status` shows them, `make down` stops them."
        )

    def _too_slow(self, late: list[ServiceState], started: Mapping[str, _Started], timeout: float) -> str:
        """What the terminal shows when servers are still not SERVING at the deadline."""
        lines = [f"not SERVING after {timeout:.0f}s:"]
        for state in late:
            lines.append(f"  {state.name} at {state.address}: {state.health} {state.detail}".rstrip())
        text = "\n".join(lines) + "\n"
        for service in sorted({state.name.removesuffix("-http") for state in late}):
            start = started.get(service)
            text += f"the end of {self._log_file(service)}:\n"
            text += self._log_excerpt(service, start.log_offset if start else 0)
        return text

    def _log_excerpt(self, name: str, log_offset: int) -> str:
        shown = readable(last_lines(self._log_file(name), since=log_offset))[-SHOWN_LOG_LINES:]
        return "".join(f"  {line.text}\n" for line in shown) or "  (nothing logged)\n"

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _recorded_pid(self, name: str) -> int | None:
        """The pid in the service's pid file, whether or not that process still runs."""
        try:
            return int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _running_pid(self, name: str) -> int | None:
        """The pid in the service's pid file, if that process is alive and really is that service."""
        pid = self._recorded_pid(name)
        return pid if pid is not None and _is_service(name, pid) else None


def check_health(address: str, timeout: float = 1.0) -> str:
    """What `grpc.health.v1.Health/Check` answers for the whole server at `address` (or UNREACHABLE)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return UNREACHABLE
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def reactor_lines(address: str, admin_token: str, timeout: float = 2.0) -> tuple[ReactorLine, ...]:
    """Each reactor of the server at `address`, from `cdp.ops.v1.OpsService` (none when it does not answer)."""
    from cdp.ops.v1 import ops_service_pb2, ops_service_pb2_grpc  # generated: imported when the cluster is up

    with grpc.insecure_channel(address) as channel:
        stub = ops_service_pb2_grpc.OpsServiceStub(channel)
        try:
            reply = stub.GetServerStatus(
                ops_service_pb2.GetServerStatusRequest(),
                timeout=timeout,
                metadata=(("authorization", f"Bearer {admin_token}"),),
            )
        except grpc.RpcError:
            return ()
    return tuple(
        ReactorLine(
            name=r.name,
            state=ops_service_pb2.ReactorState.Name(r.state).removeprefix("REACTOR_STATE_").lower(),
            lag=r.lag,
            parked=r.parked,
            events_per_second=r.events_per_second,
            last_error=r.last_error,
        )
        for r in reply.reactors
    )


def check_http(address: str, timeout: float = 1.0) -> str:
    """What ingest's HTTP `/health` answers at `address`: SERVING on 200, NOT_SERVING on 503, else UNREACHABLE."""
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=timeout) as reply:
            return SERVING if reply.status == 200 else f"HTTP {reply.status}"
    except urllib.error.HTTPError as error:
        return NOT_SERVING if error.code == 503 else f"HTTP {error.code}"
    except (OSError, ValueError):
        return UNREACHABLE


def _shared_ports(endpoints: list[Endpoint]) -> list[str]:
    """Settings that give two servers the same port: one of them could never bind."""
    by_port: dict[int, list[str]] = {}
    for endpoint in endpoints:
        by_port.setdefault(endpoint.port, []).append(endpoint.variable)
    return [
        f"{' and '.join(variables)} are all {port}: every server needs its own port"
        for port, variables in by_port.items()
        if len(variables) > 1 and port != 0
    ]


def _holder(port: int) -> str:
    """Who holds `port`, as precisely as /proc lets us say."""
    sockets = sockets_on(port) or []
    listeners = {sock.inode for sock in sockets if sock.state == LISTEN}
    if listeners:
        return _processes(pids_holding(listeners)) or "another user's process"
    waiting = [sock for sock in sockets if sock.state == TIME_WAIT]
    if waiting:
        return (
            f"a closed connection to {waiting[0].remote} in TIME_WAIT (an outgoing connection got this port; "
            "the kernel frees it within a minute)"
        )
    if sockets:
        owner = _processes(pids_holding({sock.inode for sock in sockets}))
        return f"a connection to {sockets[0].remote}" + (f" of {owner}" if owner else "")
    return "another process"


def _processes(pids: list[int]) -> str:
    return ", ".join(f"pid {pid} ({_short(_command_line(pid)) or 'unknown command'})" for pid in pids)


def _exit_status(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _is_service(name: str, pid: int) -> bool:
    """Is `pid` alive and running `services.<name>` (a recycled pid runs something else)?"""
    return _alive(pid) and f"services.{name}" in _command_line(pid)


def session_members(session: int) -> list[int]:
    """The live processes of this session that run our code (a recycled session id runs something else)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == session:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[-1].split()
        except OSError:
            continue
        # After ") ": state, ppid, pgrp, session.
        if int(fields[3]) == session and fields[0] != "Z" and "python" in _command_line(int(entry.name)):
            members.append(int(entry.name))
    return members


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended between the check and the signal
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _short(command: str, width: int = 60) -> str:
    return command if len(command) <= width else command[: width - 1] + "…"
