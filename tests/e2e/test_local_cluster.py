"""`cdp up` / `cdp status` / `cdp down` bring the five real services up and down on free ports."""

import os
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cdp.runtime.settings import SERVICES
from tests.e2e.conftest import cdp

pytestmark = pytest.mark.e2e


def pids(env: dict[str, str]) -> dict[str, int]:
    run_dir = Path(env["CDP_DATA_DIR"]) / "run"
    return {path.stem: int(path.read_text()) for path in run_dir.glob("*.pid")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    )


def test_up_serves_five_healthy_services_with_reflection_and_down_leaves_nothing(
    cluster_env: dict[str, str],
) -> None:
    started = cdp(cluster_env, "up", "--timeout", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    first_pids = pids(cluster_env)
    assert sorted(first_pids) == sorted(SERVICES)

    for name in SERVICES:
        address = f"127.0.0.1:{cluster_env[f'CDP_{name.upper()}_PORT']}"
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert f"cdp.{name}.v1.{name.capitalize()}Service" in services
        assert address in started.stdout

    again = cdp(cluster_env, "up", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert pids(cluster_env) == first_pids, "a second `up` must not start a second set of services"

    status = cdp(cluster_env, "status")
    assert status.returncode == 0
    assert status.stdout.count("SERVING") == len(SERVICES) + 1, "five gRPC servers and ingest's HTTP API"

    stopped = cdp(cluster_env, "down")
    assert stopped.returncode == 0
    assert not [pid for pid in first_pids.values() if alive(pid)]
    assert pids(cluster_env) == {}
    logs = (Path(cluster_env["CDP_DATA_DIR"]) / "logs" / "identity.log").read_text()
    assert '"event": "server_stopped"' in logs, "SIGTERM must drain and stop gracefully"

    status = cdp(cluster_env, "status")
    assert status.returncode == 3
    assert status.stdout.count("STOPPED") == len(SERVICES) + 1


def test_up_reports_a_service_that_cannot_start(cluster_env: dict[str, str]) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", int(cluster_env["CDP_SEGMENTS_PORT"])))
    blocker.listen()
    try:
        result = cdp(cluster_env, "up", "--timeout", "30")
    finally:
        blocker.close()
    assert result.returncode == 1
    assert "segments" in result.stderr
