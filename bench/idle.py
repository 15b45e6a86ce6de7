"""Idle CPU of the local cluster: how much of a core each service burns while nobody sends anything.

    .venv/bin/python -m bench.idle                     # SQLite log, 30 s of idleness
    .venv/bin/python -m bench.idle --seconds 60 --settle 10
    .venv/bin/python -m bench.idle --event-store postgresql://postgres@127.0.0.1:5432/test?schema=idle_x

Brings the real cluster up (`Cluster.up`, as `make up` does) in a temporary data directory on free ports, waits
until every service answers SERVING, lets it settle, then samples each service's CPU time (utime + stime of the
process and its children, from /proc/<pid>/stat) and its wake-ups (voluntary context switches of all its
threads) over the idle window, and brings it down. The baseline, measured in the same run, is a bare
`grpc.aio` server with only the health service: the floor any service of ours stands on. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cdp.runtime.cluster import Cluster, check_health
from cdp.runtime.ports import free_ports
from cdp.runtime.settings import SERVICES, Settings

TICKS = os.sysconf("SC_CLK_TCK")

BARE_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import _async as health_aio, health_pb2_grpc

async def main(port):
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()

asyncio.run(main(int(sys.argv[1])))
"""
"""The baseline: a grpc.aio server answering health checks and doing nothing else."""


@dataclass(frozen=True)
class Sample:
    """A process tree's CPU time (seconds) and voluntary context switches at one instant."""

    cpu: float
    wakeups: int


def cluster_environ(data_dir: Path, event_store: str | None) -> dict[str, str]:
    """This environment without its CDP_* variables, plus a data directory and free ports."""
    ports = free_ports(len(SERVICES) + 1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("CDP_")}
    env["CDP_DATA_DIR"] = str(data_dir)
    env["CDP_HTTP_PORT"] = str(ports[-1])
    for name, port in zip(SERVICES, ports, strict=False):
        env[f"CDP_{name.upper()}_PORT"] = str(port)
    if event_store:
        env["CDP_EVENT_STORE"] = event_store
    return env


def descendants(pid: int) -> list[int]:
    """The process and every process below it (children of worker pools included)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat_fields(int(entry.name))
            if stat is not None:
                parents.setdefault(int(stat[1]), []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(parents.get(current, []))
    return tree


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state, ppid, …), None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _voluntary_switches(pid: int) -> int:
    """Voluntary context switches summed over the process's threads: how often it went to sleep."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in task.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def sample(pid: int) -> Sample:
    """CPU seconds (utime + stime) and voluntary switches of a process tree now."""
    cpu, wakeups = 0.0, 0
    for member in descendants(pid):
        stat = _stat_fields(member)
        if stat is None:
            continue
        cpu += (int(stat[11]) + int(stat[12])) / TICKS  # fields 14, 15 of stat: utime, stime
        wakeups += _voluntary_switches(member)
    return Sample(cpu, wakeups)


def measure(pids: Mapping[str, int], seconds: float) -> dict[str, tuple[float, float]]:
    """(% of one core, wake-ups/s) per named process tree over `seconds` of doing nothing."""
    before = {name: sample(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    elapsed = time.monotonic() - started
    after = {name: sample(pid) for name, pid in pids.items()}
    return {
        name: (
            100 * (after[name].cpu - before[name].cpu) / elapsed,
            (after[name].wakeups - before[name].wakeups) / elapsed,
        )
        for name in pids
    }


def start_baseline() -> tuple[subprocess.Popen[bytes], str]:
    """The bare grpc.aio server, once it answers SERVING."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    process = subprocess.Popen([sys.executable, "-c", BARE_SERVER, address.rsplit(":", 1)[1]])
    deadline = time.monotonic() + 60
    while check_health(address) != "SERVING":
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the baseline gRPC server did not start")
        time.sleep(0.2)
    return process, address


def report(figures: Mapping[str, tuple[float, float]], seconds: float, target: float) -> None:
    """One line per service: % of a core, wake-ups per second, against the target."""
    print(f"\nidle for {seconds:.0f} s: CPU as % of one core (utime+stime, children included)")
    print(f"  {'process':<26}{'% core':>8}{'wake-ups/s':>12}")
    for name, (percent, wakeups) in figures.items():
        flag = "" if name.startswith("baseline") or percent < target else f"  over {target:g} %"
        print(f"  {name:<26}{percent:>8.2f}{wakeups:>12.1f}{flag}")
    services = [v[0] for k, v in figures.items() if not k.startswith("baseline")]
    print(f"  {'all services':<26}{sum(services):>8.2f}")


def run(args: argparse.Namespace) -> int:
    """Bring the cluster up, settle, measure, bring it down; exit 1 when a service is over the target."""
    with tempfile.TemporaryDirectory(prefix="cdp-idle-") as folder:
        env = cluster_environ(Path(folder) / "data", args.event_store)
        cluster = Cluster(Settings.from_env(env), env)
        baseline, _ = start_baseline()
        try:
            started = time.monotonic()
            states = cluster.up(timeout=120)
            print(
                f"cluster SERVING after {time.monotonic() - started:.1f} s ({cluster.settings.event_store})"
            )
            pids = {s.name: s.pid for s in states if s.pid is not None and s.name in SERVICES}
            time.sleep(args.settle)  # start-up work (catch-up, first flushes) is not idleness
            figures = measure({**pids, "baseline (bare grpc.aio)": baseline.pid}, args.seconds)
        finally:
            cluster.down()
            baseline.terminate()
            baseline.wait(30)
    report(figures, args.seconds, args.target)
    over = [name for name in SERVICES if name in figures and figures[name][0] >= args.target]
    return 1 if over else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the idle window")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after SERVING before sampling")
    parser.add_argument("--target", type=float, default=1.0, help="%% of a core a service should stay under")
    parser.add_argument(
        "--event-store", default=None, help="CDP_EVENT_STORE (default: SQLite in the temp dir)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
