"""The local cluster: five service processes on the embedded default, supervised by pid files.

A small supervisor of our own rather than supervisor/honcho: `make up` must return once every service answers
SERVING (honcho stays in the foreground; supervisord is a daemon with its own config language and socket), and
`make down` must stop exactly what `make up` started, which pid files plus a command-line check give us.
It does not restart crashed services: `make status` shows them, the log says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cdp.runtime.secrets import ensure_local_secrets
from cdp.runtime.settings import SERVICES, Settings


@dataclass(frozen=True)
class ServiceState:
    """One service of the cluster as `status` sees it."""

    name: str
    pid: int | None
    address: str
    health: str


class Cluster:
    """Starts, checks and stops the services, keeping pid files and logs under `<data dir>/run` and `/logs`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.run_dir = settings.data_dir / "run"
        self.log_dir = settings.data_dir / "logs"

    def up(self, timeout: float = 90.0) -> list[ServiceState]:
        """Start every service that is not running, then wait until all answer SERVING."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        secrets = ensure_local_secrets(self.settings)
        for name in SERVICES:
            if self._running_pid(name) is None:
                self._spawn(name, secrets)
        self._wait_serving(timeout)
        return self.status()

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop exactly the processes `up` started (SIGTERM, then SIGKILL after `timeout`)."""
        stopped = []
        for name in SERVICES:
            pid = self._running_pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                stopped.append((name, pid))
        deadline = time.monotonic() + timeout
        for name, pid in stopped:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            self._pid_file(name).unlink(missing_ok=True)
        return [name for name, _ in stopped]

    def status(self) -> list[ServiceState]:
        """Each service's pid (when running) and what its health check answers; ingest's HTTP API too."""
        states = []
        for name in SERVICES:
            pid = self._running_pid(name)
            address = f"{self.settings.host}:{self.settings.port_of(name)}"
            health = check_health(address) if pid is not None else "STOPPED"
            states.append(ServiceState(name, pid, address, health))
            if name == "ingest":
                http = f"{self.settings.host}:{self.settings.http_port}"
                states.append(ServiceState("ingest-http", pid, http, check_http(http) if pid else "STOPPED"))
        return states

    def _spawn(self, name: str, secrets: Mapping[str, str]) -> None:
        log_file = (self.log_dir / f"{name}.log").open("ab")
        env = {
            **self.environ,
            **secrets,
            "CDP_DATA_DIR": str(self.settings.data_dir),
            "CDP_LOG_FORMAT": "json",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal that ran `make up` must not reach the services
        )
        log_file.close()
        self._pid_file(name).write_text(str(process.pid))

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(SERVICES)
        while waiting:
            for name in sorted(waiting):
                if self._running_pid(name) is None:
                    raise ClusterError(
                        f"{name} exited during start-up; see {self.log_dir / (name + '.log')}:\n"
                        + _tail(self.log_dir / f"{name}.log")
                    )
                if check_health(f"{self.settings.host}:{self.settings.port_of(name)}") == "SERVING" and (
                    name != "ingest"
                    or check_http(f"{self.settings.host}:{self.settings.http_port}") == "SERVING"
                ):
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise ClusterError(f"not SERVING after {timeout:.0f}s: {', '.join(sorted(waiting))}")
            if waiting:
                time.sleep(0.2)

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _running_pid(self, name: str) -> int | None:
        """The pid in the service's pid file, if that process is alive and really is that service."""
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid) or f"services.{name}" not in _command_line(pid):
            self._pid_file(name).unlink(missing_ok=True)
            return None
        return pid


class ClusterError(RuntimeError):
    """The cluster could not be brought up."""


def check_health(address: str, timeout: float = 1.0) -> str:
    """What `grpc.health.v1.Health/Check` answers for the whole server at `address` (or UNREACHABLE)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def check_http(address: str, timeout: float = 1.0) -> str:
    """What ingest's HTTP `/health` answers at `address`: SERVING on 200, UNREACHABLE otherwise."""
    try:
        with urllib.request.urlopen(f"http://{address}/health", timeout=timeout) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except (OSError, ValueError):
        return "UNREACHABLE"


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
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
