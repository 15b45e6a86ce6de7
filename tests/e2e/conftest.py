"""The local cluster, brought up by the real `cdp up` on free ports in a temporary data directory."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdp.runtime.settings import SERVICES


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    ports = free_ports(len(SERVICES) + 1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDP_")}
    env["CDP_DATA_DIR"] = str(tmp_path / "data")
    env["CDP_HTTP_PORT"] = str(ports[-1])
    for name, port in zip(SERVICES, ports, strict=False):
        env[f"CDP_{name.upper()}_PORT"] = str(port)
    yield env
    cdp(env, "down")  # never leave processes behind, even when the test failed


def cdp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdp.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
