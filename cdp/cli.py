"""The `cdp` command: run the local cluster (`up`, `down`, `status`), probe a server (`health`), `demo`."""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import fields

from cdp.runtime.cluster import SERVING, Cluster, ClusterError, ServiceState, check_health
from cdp.runtime.settings import DEV_WRITE_KEY, Settings, SettingsError

STATUS_NOT_ALL_SERVING = 3
"""`cdp status` exits 0 when every server is SERVING, this otherwise (1 is a settings or usage error)."""

KNOWN_VARIABLES = tuple(f"CDP_{field.name.upper()}" for field in fields(Settings) if field.name != "extra")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cdp` console script."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        answer = check_health(args.address)
        print(answer)
        return 0 if answer == SERVING else 1
    try:
        settings = Settings.from_env()
        for warning in unknown_settings(settings):
            print(f"cdp {args.command}: warning: {warning}", file=sys.stderr)
        return _run(args, settings)
    except (ClusterError, SettingsError) as error:
        print(f"cdp {args.command}: {error}", file=sys.stderr)
        return 1


def unknown_settings(settings: Settings) -> list[str]:
    """One warning per unrecognised `CDP_*` variable, with the setting it was probably meant to be."""
    return [
        f"{variable} is not a setting and is ignored{_suggestion(variable)}"
        for variable in sorted(settings.extra)
    ]


def _run(args: argparse.Namespace, settings: Settings) -> int:
    cluster = Cluster(settings)
    if args.command == "demo":
        from cdp.demo import run as run_demo  # needs the generated identity contract

        return run_demo(settings, args.write_key)
    if args.command == "up":
        print_states(cluster.up(timeout=args.timeout))
        print(f"logs: {cluster.log_dir}/  (make logs)")
    elif args.command == "down":
        stopped = cluster.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    else:
        states = cluster.status()
        print_states(states)
        return 0 if all(state.health == SERVING for state in states) else STATUS_NOT_ALL_SERVING
    return 0


def print_states(states: list[ServiceState]) -> None:
    """The status table: one row per server, and why it is not SERVING when we know."""
    print(f"{'service':<12}{'pid':>8}  {'address':<22}{'health':<13}detail")
    for state in states:
        row = f"{state.name:<12}{state.pid or '-':>8}  {state.address:<22}{state.health:<13}{state.detail}"
        print(row.rstrip())
        for reactor in state.reactors:
            line = (
                f"  reactor {reactor.name:<20} {reactor.state:<12} lag {reactor.lag:<8} "
                f"parked {reactor.parked:<4} {reactor.events_per_second:,.1f} events/s"
            )
            print(line + (f"  last error: {reactor.last_error}" if reactor.last_error else ""))


def _suggestion(variable: str) -> str:
    # Compared without the common `CDP_` prefix, which would make every pair look alike.
    known = {name[4:]: name for name in KNOWN_VARIABLES}
    close = difflib.get_close_matches(variable.removeprefix("CDP_"), list(known), n=1, cutoff=0.75)
    return f" (did you mean {known[close[0]]}?)" if close else ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description="Customer data platform: the local cluster.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the five services in the background and wait until SERVING")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for SERVING")
    commands.add_parser("down", help="stop the services `up` started")
    commands.add_parser(
        "status",
        help=f"show each server's state; exit 0 when all are SERVING, {STATUS_NOT_ALL_SERVING} otherwise",
    )
    demo = commands.add_parser(
        "demo", help="send one person's journey to a running cluster and show the profile"
    )
    demo.add_argument("--write-key", default=DEV_WRITE_KEY, help="a write key the cluster accepts")
    health = commands.add_parser("health", help="exit 0 when the gRPC server at ADDRESS answers SERVING")
    health.add_argument("address", help="host:port")
    return parser


if __name__ == "__main__":
    sys.exit(main())
