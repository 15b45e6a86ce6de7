"""The `cdp` command: run the local cluster (`up`, `down`, `status`), probe a server (`health`), `demo`."""

from __future__ import annotations

import argparse
import sys

from cdp.runtime.cluster import Cluster, ClusterError, ServiceState, check_health
from cdp.runtime.settings import DEV_WRITE_KEY, Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cdp` console script."""
    parser = argparse.ArgumentParser(prog="cdp", description="Customer data platform: the local cluster.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the five services in the background and wait until SERVING")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for SERVING")
    commands.add_parser("down", help="stop the services `up` started")
    commands.add_parser("status", help="show each service's health")
    demo = commands.add_parser(
        "demo", help="send one person's journey to a running cluster and show the profile"
    )
    demo.add_argument("--write-key", default=DEV_WRITE_KEY, help="a write key the cluster accepts")
    health = commands.add_parser("health", help="exit 0 when the gRPC server at ADDRESS answers SERVING")
    health.add_argument("address", help="host:port")
    args = parser.parse_args(argv)
    if args.command == "health":
        answer = check_health(args.address)
        print(answer)
        return 0 if answer == "SERVING" else 1
    try:
        cluster = Cluster(Settings.from_env())
        if args.command == "demo":
            from cdp.demo import run as run_demo  # needs the generated identity contract

            return run_demo(Settings.from_env(), args.write_key)
        if args.command == "up":
            _print_states(cluster.up(timeout=args.timeout))
            print(f"logs: {cluster.log_dir}/  (make logs)")
        elif args.command == "down":
            stopped = cluster.down()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        else:
            states = cluster.status()
            _print_states(states)
            return 0 if all(state.health == "SERVING" for state in states) else 3
    except (ClusterError, SettingsError) as error:
        print(f"cdp {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


def _print_states(states: list[ServiceState]) -> None:
    print(f"{'service':<12}{'pid':>8}  {'address':<22}health")
    for state in states:
        print(f"{state.name:<12}{state.pid or '-':>8}  {state.address:<22}{state.health}")


if __name__ == "__main__":
    sys.exit(main())
