"""`cdp up` / `cdp status` / `cdp down` bring the five real services up and down on free ports."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cdp.runtime.settings import SERVICES
from tests.e2e.conftest import cdp, wait_until

pytestmark = pytest.mark.e2e


def pids(env: dict[str, str]) -> dict[str, int]:
    run_dir = Path(env["CDP_DATA_DIR"]) / "run"
    return {path.stem: int(path.read_text()) for path in run_dir.glob("*.pid")}


def rows(status: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """`cdp status` as {server: [pid, address, health, detail...]} (the indented reactor lines left out)."""
    lines = [line for line in status.stdout.splitlines()[1:] if line and not line[0].isspace()]
    return {line.split()[0]: line.split()[1:] for line in lines}


def reactor_rows(status: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """`cdp status`'s reactor lines as {reactor: [state, "lag", n, "parked", n, ...]}."""
    lines = [line.split() for line in status.stdout.splitlines() if line.startswith("  reactor ")]
    return {words[1]: words[2:] for words in lines}


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


def test_a_second_up_on_ports_another_cluster_holds_starts_nothing_and_leaves_that_cluster_alone(
    cluster_env: dict[str, str], tmp_path: Path
) -> None:
    first = cdp(cluster_env, "up", "--timeout", "60")
    assert first.returncode == 0, first.stdout + first.stderr
    held = pids(cluster_env)
    second_env = {**cluster_env, "CDP_DATA_DIR": str(tmp_path / "second")}
    try:
        second = cdp(second_env, "up", "--timeout", "60")
        assert second.returncode == 1, second.stdout + second.stderr
        for name in SERVICES:
            variable = f"CDP_{name.upper()}_PORT"
            assert f"{variable}={cluster_env[variable]} is in use by pid {held[name]} (" in second.stderr
        http = f"CDP_HTTP_PORT={cluster_env['CDP_HTTP_PORT']} is in use by pid {held['ingest']} ("
        assert http in second.stderr
        assert pids(second_env) == {}, "nothing of the second cluster was started"
        status = cdp(second_env, "status")
        assert status.returncode == 3
        assert [row[2] for row in rows(status).values()] == ["STOPPED"] * (len(SERVICES) + 1), status.stdout
    finally:
        cdp(second_env, "down")
    assert pids(cluster_env) == held
    assert all(alive(pid) for pid in held.values()), "the first cluster is untouched"
    assert cdp(cluster_env, "status").returncode == 0


def test_a_killed_service_is_dead_in_status_until_up_restarts_it(cluster_env: dict[str, str]) -> None:
    started = cdp(cluster_env, "up", "--timeout", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    before = pids(cluster_env)
    os.kill(before["segments"], signal.SIGKILL)
    wait_until(lambda: not alive(before["segments"]), "segments is gone after kill -9")

    status = cdp(cluster_env, "status")
    assert status.returncode == 3, status.stdout
    shown = rows(status)
    assert shown["segments"][:3] == [
        str(before["segments"]),
        f"127.0.0.1:{cluster_env['CDP_SEGMENTS_PORT']}",
        "DEAD",
    ]
    assert "no error logged (killed?)" in " ".join(shown["segments"][3:])
    reactors = reactor_rows(status)
    assert sorted(reactors) == [
        "governance-consent",
        "governance-requests",
        "identity-resolver",
        "ingest-config",
        "ingest-state",
    ]
    assert all(words[:5] == ["live", "lag", "0", "parked", "0"] for words in reactors.values()), status.stdout
    assert [row[2] for name, row in shown.items() if name != "segments"] == ["SERVING"] * len(SERVICES)

    if shutil.which("make"):  # make reports a failed recipe with its own exit code, 2, and names ours
        repo = Path(__file__).resolve().parents[2]
        made = subprocess.run(
            ["make", "-s", "-o", "setup", "status", f"PY={sys.executable}"],
            cwd=repo,
            env=cluster_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 2, made.stdout + made.stderr
        assert "Error 3" in made.stderr and "DEAD" in made.stdout

    again = cdp(cluster_env, "up", "--timeout", "60")
    assert again.returncode == 0, again.stdout + again.stderr
    after = pids(cluster_env)
    assert after["segments"] != before["segments"]
    assert {k: v for k, v in after.items() if k != "segments"} == {
        k: v for k, v in before.items() if k != "segments"
    }, "only the dead service is started again"


def test_a_service_that_exits_at_start_fails_up_at_once_with_the_reason_from_its_log(
    cluster_env: dict[str, str],
) -> None:
    # A real failure only ingest meets at start: its read-model database path is a directory.
    (Path(cluster_env["CDP_DATA_DIR"]) / "ingest.db").mkdir(parents=True)
    result = cdp(cluster_env, "up", "--timeout", "100")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingest exited during start-up with exit code 1" in result.stderr
    assert "OperationalError: (sqlite3.OperationalError) unable to open database file" in result.stderr
    assert "not SERVING after" not in result.stderr, "it failed when ingest exited, not at the timeout"
    assert '"event":' not in result.stderr and "File " not in result.stderr, (
        "readable lines, not JSON or frames"
    )

    status = cdp(cluster_env, "status")
    assert status.returncode == 3
    ingest = rows(status)["ingest"]
    assert ingest[2] == "DEAD" and "unable to open database file" in " ".join(ingest[3:])


def test_up_refuses_a_taken_port_before_starting_anything_and_warns_of_unknown_variables(
    cluster_env: dict[str, str],
) -> None:
    port = int(cluster_env["CDP_SEGMENTS_PORT"])
    env = {**cluster_env, "CDP_SEGMENT_PORT": str(port + 1)}
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        result = cdp(env, "up", "--timeout", "30")
    finally:
        blocker.close()
    assert result.returncode == 1
    assert f"CDP_SEGMENTS_PORT={port} is in use by pid {os.getpid()} (" in result.stderr
    warning = "warning: CDP_SEGMENT_PORT is not a setting and is ignored (did you mean CDP_SEGMENTS_PORT?)"
    assert warning in result.stderr
    assert pids(env) == {}, "nothing was started"
    assert not (Path(env["CDP_DATA_DIR"]) / "logs" / "ingest.log").exists()
