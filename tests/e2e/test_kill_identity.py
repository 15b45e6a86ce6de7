"""kill -9 of identity while it catches up with a backlog: no orphan survives, and the restart loses nothing.

Identity opens a backlog's messages in a worker process (`services.identity.prepare.OpenerProcess`), which brings
multiprocessing's resource tracker along. Both used to outlive a kill -9 of the service for good.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import signal
from pathlib import Path

import grpc
import pytest
import requests

from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.runtime import resources
from cdp.runtime.cluster import session_members
from cdp.runtime.settings import Settings
from services.identity.resolver import Resolver
from tests.e2e.conftest import cdp, wait_until

pytestmark = pytest.mark.e2e

ADMIN = (("authorization", "Bearer dev-admin-token"),)
PEOPLE = 6000
BASIC = "Basic " + base64.b64encode(b"dev-write-key:").decode()


def identity_pid(env: dict[str, str]) -> int:
    return int((Path(env["CDP_DATA_DIR"]) / "run" / "identity.pid").read_text())


def send_backlog(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{env['CDP_HTTP_PORT']}/v1/batch"
    for start in range(0, PEOPLE, 1000):
        batch = [
            {"type": "identify", "userId": f"person-{n}", "messageId": f"m-{n}", "traits": {"n": n}}
            for n in range(start, start + 1000)
        ]
        reply = requests.post(
            url, data=json.dumps({"batch": batch}), headers={"Authorization": BASIC}, timeout=60
        )
        assert reply.status_code == 200, reply.text


def profile_count(env: dict[str, str]) -> int | None:
    with grpc.insecure_channel(f"127.0.0.1:{env['CDP_IDENTITY_PORT']}") as channel:
        listing = channel.unary_unary(
            "/cdp.identity.v1.IdentityService/ListProfiles",
            request_serializer=pb.ListProfilesRequest.SerializeToString,
            response_deserializer=pb.ListProfilesResponse.FromString,
        )
        seen, token = 0, ""
        try:
            while True:
                page = listing(
                    pb.ListProfilesRequest(page={"page_size": 1000, "page_token": token}),
                    metadata=ADMIN,
                    timeout=30,
                )
                seen += len(page.profiles)
                token = page.page.next_page_token
                if not token:
                    return seen
        except grpc.RpcError:
            return None


def test_kill_9_during_catch_up_leaves_no_orphan_and_the_restart_has_every_profile(
    cluster_env: dict[str, str],
) -> None:
    env = cluster_env
    started = cdp(env, "up", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr
    first = identity_pid(env)
    os.kill(first, signal.SIGKILL)  # identity down: the messages below wait for it in the log
    send_backlog(env)

    for _ in range(2):
        again = cdp(env, "up", "--timeout", "90")
        assert again.returncode == 0, again.stdout + again.stderr
        pid = identity_pid(env)
        workers = wait_until(
            functools.partial(session_members, pid), "identity started its worker", timeout=90
        )
        os.kill(pid, signal.SIGKILL)
        try:
            wait_until(functools.partial(_ended, pid), "the orphans of a killed identity ended", 60)
        except AssertionError as error:
            raise AssertionError(f"{error}: {_described(workers)}") from None

    finished = cdp(env, "up", "--timeout", "90")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert wait_until(lambda: profile_count(env) == PEOPLE or None, f"{PEOPLE} profiles after restarts", 180)
    assert cdp(env, "down").returncode == 0
    live, rebuilt = asyncio.run(live_and_rebuilt(env))
    assert sum(map(len, live.values())) > PEOPLE, "the snapshot holds the profiles' rows"
    assert rebuilt == live, (
        "the read model left by the killed identity differs from a fresh rebuild of the log"
    )


async def live_and_rebuilt(env: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Identity's read model as the cluster left it, and as a fresh rebuild from the log alone makes it."""
    settings = Settings.from_env(env)
    store, keyring = resources.event_store(settings), resources.keyring(settings)
    engine = resources.read_model_engine(settings, "identity")
    try:
        resolver = Resolver(store, keyring, resources.subject_ids(settings), engine)
        await resolver.catch_up()  # nothing left to do: the last `up` settled it
        live = await resolver.snapshot()
        await resolver.rebuild()
        return live, await resolver.snapshot()
    finally:
        await store.close()
        keyring.close()
        engine.dispose()


def _ended(session: int) -> bool:
    return not session_members(session)


def _described(pids: list[int]) -> str:
    """The orphans' command lines and parents, for a failure message."""
    described = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        described.append(f"{pid} (state {stat[0]}, parent {stat[1]}): {command}")
    return "; ".join(described)
