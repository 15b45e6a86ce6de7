"""The local cluster, brought up by the real `cdp up` on free ports in a temporary data directory."""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from cdp.runtime.ports import free_ports
from cdp.runtime.settings import SERVICES

T = TypeVar("T")


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = environment_for(tmp_path)
    yield env
    cdp(env, "down")  # never leave processes behind, even when the test failed


def environment_for(directory: Path) -> dict[str, str]:
    """The environment of a cluster on free ports with its data under `directory`."""
    ports = free_ports(len(SERVICES) + 1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDP_")}
    env["CDP_DATA_DIR"] = str(directory / "data")
    env["CDP_HTTP_PORT"] = str(ports[-1])
    for name, port in zip(SERVICES, ports, strict=False):
        env[f"CDP_{name.upper()}_PORT"] = str(port)
    return env


def cdp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdp.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)
    return found
