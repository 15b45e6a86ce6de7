"""kill -9 of ingest under load, with clients that retry: nothing acknowledged is lost, nothing is stored twice.

Four clients post `/v1/batch` requests of 20 `track` messages, each message with a messageId of its own, and
retry a batch with the same body until it is answered 200 (as Segment's SDKs do: connection errors, timeouts,
5xx and 429 are retried with a capped backoff; any other 4xx fails the test). Meanwhile ingest is killed with
SIGKILL three times, each time after more traffic was acknowledged, and `cdp up` starts it again.

The dangerous moment is after a batch's commit and before its 200 went out: the client then sends the batch
again although the log holds it already. A kill at a random moment rarely lands there (with the dedupe
disabled, only one run in five doubled anything), so each kill is aimed: ingest is frozen with SIGSTOP, and killed
while frozen if the log already holds a batch some client still waits for; otherwise it is let go (SIGCONT) and
frozen again after the next acknowledgement, a bounded number of times. How many batches really were sent
again after their commit is measured afterwards from the log, and the test insists on at least one.

The log is read the simplest honest way: every `MessageCollected` event (what ingest appends per message) of
the cluster's own log, decoded with the event catalog. Its `message_id` is stored in the clear (only the
personal fields are sealed in `payload`), so counting stored messages needs no keyring. Ingest dedupes by
deriving the event id from (source, messageId), and the log refuses an event id twice; this test checks the
outcome only, not that mechanism.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import requests

from cdp.eventlog import START, EventFilter, EventStoreUnavailable, open_event_store
from cdp.events import MessageCollected, from_recorded
from cdp.runtime.settings import DEV_WRITE_KEY, Settings
from tests.e2e.conftest import cdp, wait_until

pytestmark = pytest.mark.e2e

CLIENTS = 4
BATCH = 20
BATCHES_PER_CLIENT = 75  # 4 x 75 x 20 = 6,000 messages
TOTAL = CLIENTS * BATCHES_PER_CLIENT * BATCH
KILL_AFTER = (800, 2000, 3200)
"""Acknowledged messages before each kill; the 2,800 after the last leave room for its aiming."""
FREEZES = 20
"""SIGSTOPs per kill looking for a committed batch still waiting for its answer; then it is killed anyway."""
GRACE = 0.3
"""Seconds a frozen ingest's answers already on their way get to arrive before it counts as aimed: a frozen
ingest answers nothing new, so only these can. It only sharpens the aim; the outcome is measured exactly."""
USERS = 200
BASIC = "Basic " + base64.b64encode(f"{DEV_WRITE_KEY}:".encode()).decode()
REQUEST_TIMEOUT = (5.0, 30.0)
"""Connect and read timeouts of one attempt (a timeout is retried like any other transient failure)."""
BATCH_DEADLINE = 90.0
"""Seconds a client keeps retrying one batch before it gives up (only a cap against a hang)."""
MESSAGES = EventFilter(event_types=(MessageCollected.type_name,))


@dataclass
class Tally:
    """What the clients sent and were acknowledged, shared between their threads and the test's."""

    changed: threading.Condition = field(default_factory=lambda: threading.Condition(threading.RLock()))
    """Held while reading or changing the fields below; notified on every acknowledgement and failure."""
    sent: set[str] = field(default_factory=set)
    acknowledged: list[str] = field(default_factory=list)
    batches: list[tuple[list[str], float]] = field(default_factory=list)
    """Each acknowledged batch's ids and when (wall clock) the attempt that got its 200 started."""
    waiting: dict[int, list[str]] = field(default_factory=dict)
    """Per client, the ids of the batch it is sending and has no 200 for yet."""
    finished: int = 0
    retries: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def acknowledged_count(self) -> int:
        with self.changed:
            return len(self.acknowledged)

    def waiting_ids(self) -> set[str]:
        with self.changed:
            return {message_id for ids in self.waiting.values() for message_id in ids}

    def done(self) -> bool:
        """Every client has finished, or one failed: nothing more will be acknowledged."""
        with self.changed:
            return self.finished == CLIENTS or bool(self.failures)

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether `condition()` came to hold (woken by the clients) within `timeout` seconds."""
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Return as soon as `condition()` holds; AssertionError naming `what` after `timeout` seconds."""
        if not self.wait(condition, timeout):
            raise AssertionError(f"not within {timeout:.0f}s: {what}")


class LogReader:
    """The cluster's event log, read as it grows: how often, and first when, each message id was stored."""

    def __init__(self, env: dict[str, str]) -> None:
        self._runner = asyncio.Runner()
        self._store = open_event_store(Settings.from_env(env).event_store)  # the default the cluster derives
        self._after = START
        self.counts: Counter[str] = Counter()
        self.first_recorded: dict[str, datetime] = {}

    def catch_up(self) -> Counter[str]:
        recorded = self._runner.run(self._store.read_all(self._after, filter=MESSAGES))
        for event in recorded:
            message = from_recorded(event)
            assert isinstance(message, MessageCollected)
            self.counts[message.message_id] += 1
            self.first_recorded.setdefault(message.message_id, event.recorded_at)
            self._after = event.global_position
        return self.counts

    def close(self) -> None:
        self._runner.run(self._store.close())
        self._runner.close()


@dataclass
class Kill:
    """One kill -9: when, whether a client still waited for an answer, and how the aiming went."""

    at: float
    under_load: bool
    aimed: bool
    """Killed while frozen with a committed batch still waiting (False: the freezes ran out, killed anyway)."""
    unreadable: int
    """Freezes during which the log could not be read (SQLite gives up on a writer frozen mid-update)."""


def ingest_pid(env: dict[str, str]) -> int:
    return int((Path(env["CDP_DATA_DIR"]) / "run" / "ingest.pid").read_text())


def batch_body(client: int, number: int) -> tuple[list[str], bytes]:
    """The message ids and the JSON body of a client's batch (the same bytes on every retry)."""
    ids, messages = [], []
    for offset in range(BATCH):
        seq = number * BATCH + offset
        message_id = f"kill-{client}-{seq}"
        ids.append(message_id)
        messages.append(
            {
                "type": "track",
                "event": "Kill Test",
                "userId": f"kill-user-{(client * 7919 + seq) % USERS}",  # clients share subjects' streams
                "messageId": message_id,
                "properties": {"client": client, "seq": seq},
            }
        )
    return ids, json.dumps({"batch": messages}).encode()


def run_client(url: str, client: int, tally: Tally) -> None:
    """Send this client's batches one after the other, each retried with the same body until answered 200."""
    try:
        with requests.Session() as session:
            for number in range(BATCHES_PER_CLIENT):
                ids, body = batch_body(client, number)
                with tally.changed:
                    tally.sent.update(ids)
                    tally.waiting[client] = ids
                started = send_until_acknowledged(session, url, body, tally)
                if started is None:
                    return
                with tally.changed:
                    del tally.waiting[client]
                    tally.acknowledged.extend(ids)
                    tally.batches.append((ids, started))
                    tally.changed.notify_all()
    finally:
        with tally.changed:
            tally.finished += 1
            tally.changed.notify_all()


def send_until_acknowledged(session: requests.Session, url: str, body: bytes, tally: Tally) -> float | None:
    """Post until 200: when the answered attempt started; None when the test stops or the batch failed for good."""
    headers = {"Authorization": BASIC, "Content-Type": "application/json"}
    deadline = time.monotonic() + BATCH_DEADLINE
    delay = 0.05
    first = True
    while not tally.stop.is_set():
        if not first:
            with tally.changed:
                tally.retries += 1
        first = False
        started = time.time()
        try:
            reply = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT)
        except requests.RequestException as error:  # refused, reset mid-request, timed out
            why = type(error).__name__
        else:
            if reply.status_code == 200:
                return started
            if reply.status_code != 429 and reply.status_code < 500:
                _fail(tally, f"HTTP {reply.status_code}: {reply.text[:300]}")
                return None
            why = f"HTTP {reply.status_code}"
        if time.monotonic() > deadline:
            _fail(tally, f"a batch not acknowledged within {BATCH_DEADLINE:.0f}s (last: {why})")
            return None
        tally.stop.wait(delay)  # the client's backoff, not synchronisation: whatever comes next is handled
        delay = min(1.0, delay * 2)
    return None


def kill_after_a_commit(pid: int, tally: Tally, log: LogReader) -> Kill:
    """SIGKILL ingest, aimed at a moment when it has committed a batch whose client still waits."""
    aimed, unreadable = False, 0
    for _ in range(FREEZES):
        if tally.done():
            break  # no traffic left to aim at (the test then fails on `under_load`)
        os.kill(pid, signal.SIGSTOP)
        wait_until(functools.partial(_state_is, pid, "T"), f"ingest (pid {pid}) stopped", timeout=30)
        try:
            stored = log.catch_up()  # frozen: nothing more gets committed
        except EventStoreUnavailable:
            unreadable += 1
        else:
            committed = {message_id for message_id in tally.waiting_ids() if message_id in stored}
            if committed and not _answered_meanwhile(tally, committed):
                aimed = True
                break
        os.kill(pid, signal.SIGCONT)
        progress = tally.acknowledged_count()
        tally.wait_for(functools.partial(_progressed, tally, progress), "traffic after SIGCONT", 60)
    under_load = bool(tally.waiting_ids())
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    return Kill(killed_at, under_load, aimed, unreadable)


def test_kill_9_of_ingest_under_retrying_load_loses_nothing_and_doubles_nothing(
    cluster_env: dict[str, str],
) -> None:
    env = cluster_env
    began = time.monotonic()
    started = cdp(env, "up", "--timeout", "90")
    assert started.returncode == 0, started.stdout + started.stderr

    url = f"http://127.0.0.1:{env['CDP_HTTP_PORT']}/v1/batch"
    tally = Tally()
    log = LogReader(env)
    log.catch_up()  # its connection is opened now, not first while ingest is frozen
    clients = [
        threading.Thread(target=run_client, args=(url, n, tally), name=f"client-{n}", daemon=True)
        for n in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    kills: list[Kill] = []
    try:
        for threshold in KILL_AFTER:
            tally.wait_for(
                functools.partial(_acknowledged, tally, threshold),
                f"{threshold} messages acknowledged before kill {len(kills) + 1}",
                timeout=90,
            )
            assert not tally.failures, tally.failures
            pid = ingest_pid(env)
            kills.append(kill_after_a_commit(pid, tally, log))
            wait_until(functools.partial(_gone, pid), f"killed ingest (pid {pid}) gone", timeout=30)
            again = cdp(env, "up", "--timeout", "90")
            assert again.returncode == 0, again.stdout + again.stderr
            assert ingest_pid(env) != pid
        tally.wait_for(tally.done, "the clients finished", timeout=max(1.0, 100 - (time.monotonic() - began)))
    finally:
        tally.stop.set()
        for thread in clients:
            thread.join(timeout=10)
        log.close()
    assert not tally.failures, tally.failures

    final = LogReader(env)  # the whole log again, from its start
    try:
        stored = final.catch_up()
    finally:
        final.close()
    acknowledged = set(tally.acknowledged)
    lost = acknowledged - stored.keys()
    doubled = {message_id: count for message_id, count in stored.items() if count > 1}
    unknown = stored.keys() - tally.sent
    replayed = sum(
        1
        for ids, answered_attempt in tally.batches
        if (first := min((final.first_recorded[i].timestamp() for i in ids if i in stored), default=None))
        and any(first < kill.at < answered_attempt for kill in kills)
    )
    unreadable = sum(kill.unreadable for kill in kills)
    print(
        f"\nkill -9 ingest: sent {len(tally.sent)}, acknowledged {len(acknowledged)}, stored {len(stored)}, "
        f"lost {len(lost)}, doubled {len(doubled)}, kills {len(kills)}, retries {tally.retries}, "
        f"aimed kills {sum(kill.aimed for kill in kills)}, batches sent again after their commit {replayed}"
        + (f", log unreadable while frozen {unreadable}" if unreadable else "")
        + f" ({time.monotonic() - began:.1f}s)"
    )
    assert len(kills) == len(KILL_AFTER)
    assert all(kill.under_load for kill in kills), f"a kill found no traffic: {kills}"
    assert len(tally.acknowledged) == len(acknowledged) == len(tally.sent) == TOTAL
    assert not lost, f"{len(lost)} acknowledged messages not in the log, e.g. {sorted(lost)[:5]}"
    assert not doubled, f"{len(doubled)} messages stored more than once, e.g. {sorted(doubled.items())[:5]}"
    assert not unknown, f"{len(unknown)} stored messages nobody sent, e.g. {sorted(unknown)[:5]}"
    assert replayed, f"no kill fell between a commit and its 200, so no stored batch was sent again: {kills}"


def _answered_meanwhile(tally: Tally, committed: set[str]) -> bool:
    """Whether a committed batch still waiting was answered after all within the grace (the 200 was sent)."""
    return tally.wait(functools.partial(_no_longer_waiting, tally, committed), GRACE)


def _no_longer_waiting(tally: Tally, ids: set[str]) -> bool:
    return not ids <= tally.waiting_ids()


def _fail(tally: Tally, why: str) -> None:
    with tally.changed:
        tally.failures.append(why)
        tally.changed.notify_all()


def _acknowledged(tally: Tally, threshold: int) -> bool:
    """At least `threshold` messages acknowledged, or nothing more will be (the caller reports failures)."""
    return tally.acknowledged_count() >= threshold or tally.done()


def _progressed(tally: Tally, count: int) -> bool:
    return tally.acknowledged_count() > count or tally.done()


def _state_is(pid: int, state: str) -> bool:
    return _state(pid) == state


def _gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped yet counts as ended)."""
    return _state(pid) in ("", "Z", "X")


def _state(pid: int) -> str:
    """The process's state letter from /proc (`R`, `S`, `T` stopped, `Z` zombie…), empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][:1]
    except OSError:
        return ""
