"""Opening collected messages a page ahead, in a worker process: the resolver's second core.

Decoding a message, decrypting its payload and extracting, normalising and hashing its identifiers need
nothing of the graph. A worker process does that for page N+1 while the resolver decides and saves page N.
It is given the data keys the resolver prefetched (key bytes), the rules in force and the subject-id secret
(its `SubjectIds`); anything it cannot do exactly as the resolver would (a body the catalog refuses, a subject
whose keys it was not given, any error) it leaves to the resolver, which then opens that message itself.
"""

from __future__ import annotations

import copyreg
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from cdp.eventlog.port import RecordedEvent
from cdp.events import REGISTRY
from cdp.events.ingest import PAYLOAD_CONTEXT, MessageCollected
from cdp.events.streams import SUBJECT
from cdp.keyring import DecryptionFailed, SubjectKeys, decrypt_value_with, is_subject_id
from cdp.keyring import SubjectErased as KeyErased
from services.identity.domain.decider import identities_from, previous_of
from services.identity.domain.identifiers import Hasher, Identity, e164, raw_identifiers
from services.identity.domain.rules import Rules

HASH_CACHE = 200_000
IDENTITIES_CACHE = 100_000


class IdentitiesCache:
    """A message's usable identifiers by its raw identifier values, under one rule set.

    A person's messages mostly carry the same identifiers, so normalising, checking and hashing them once
    saves most of observing. Bounded, and to be cleared with the subject-id cache (it maps clear values).
    """

    def __init__(self) -> None:
        self.rules: Rules | None = None
        self.found: dict[tuple[tuple[str, Any], ...], tuple[Identity, ...]] = {}

    def identities(self, payload: Mapping[str, Any], rules: Rules, hasher: Hasher) -> tuple[Identity, ...]:
        """`identities_of(payload, rules, hasher)`, cached when every raw value is a string or absent."""
        raws = tuple(raw_identifiers(payload))
        # Only strings and None: 1, 1.0 and True are equal keys but do not normalise alike.
        if not all(type(raw) is str or raw is None for _, raw in raws):
            return identities_from(raws, rules, hasher)
        if rules is not self.rules:
            self.rules, self.found = rules, {}
        found = self.found.get(raws)
        if found is None:
            if len(self.found) >= IDENTITIES_CACHE:
                self.found.clear()
            found = self.found[raws] = identities_from(raws, rules, hasher)
        return found

    def clear(self) -> None:
        """Forget everything (after an erasure)."""
        self.found.clear()


class HashCache:
    """Subject ids, cached: a person's identifiers recur in most of their messages (HMAC is not free)."""

    def __init__(self, hasher: Hasher, cache: dict[tuple[str, str], str] | None = None) -> None:
        self._hasher, self.cache = hasher, {} if cache is None else cache

    def __call__(self, identifier_type: str, value: str) -> str:
        key = (identifier_type, value)
        found = self.cache.get(key)
        if found is None:
            if len(self.cache) >= HASH_CACHE:
                self.cache.clear()  # bounded; a clear is cheaper than LRU bookkeeping per lookup
            found = self.cache[key] = self._hasher(identifier_type, value)
        return found


def _identity(identity: Identity) -> tuple[type[Identity], tuple[str, str, str]]:
    return Identity, (identity.type, identity.value, identity.subject)


# Identities cross from the worker by the thousand: rebuilt by their constructor they unpickle several times
# faster than through the generic state of a slotted dataclass.
copyreg.pickle(Identity, _identity)


class Opened(NamedTuple):
    """What observing needs of one collected message, opened; `identities` None: shredded (skip it)."""

    message_id: str
    message_type: str
    timestamp: datetime
    source_id: str
    event_name: str | None
    identities: tuple[Identity, ...] | None
    previous: tuple[Identity, Identity] | None
    traits: dict[str, Any]


@dataclass(frozen=True)
class PageTask:
    """One page's messages for the worker: bodies and schema versions, with the keys and rules to use.

    `generation` changes whenever the rules change or a subject is erased: the worker then drops its caches
    (they map clear values), and the resolver drops pages opened under an older generation.
    """

    generation: int
    rules: Rules
    keys: Mapping[str, SubjectKeys]
    messages: Sequence[tuple[bytes, str]]


def message_subjects(page: Sequence[RecordedEvent]) -> list[str]:
    """The subjects whose keys a page's messages need, from their stream names (`subject-<id>`).

    A hint: a message whose subject differs from its stream's is left to the resolver by the worker.
    """
    subjects: list[str] = []
    for recorded in page:
        if recorded.type == MessageCollected.type_name:
            category, _, subject = recorded.stream.partition("-")
            if category == SUBJECT and is_subject_id(subject):
                subjects.append(subject)
    return subjects


def page_task(
    page: Sequence[RecordedEvent], generation: int, rules: Rules, keys: Mapping[str, SubjectKeys]
) -> PageTask:
    """The worker's task for a page (its messages, in page order)."""
    messages = [
        (r.data, r.metadata.get("schema_version", "1")) for r in page if r.type == MessageCollected.type_name
    ]
    return PageTask(generation, rules, keys, messages)


class Opener:
    """Opens pages of messages; one lives in the worker process (it runs in-process in tests too)."""

    def __init__(self, hasher: Hasher) -> None:
        self._hash = HashCache(hasher)
        self._identities = IdentitiesCache()
        self._generation: int | None = None
        self._rules: Rules | None = None

    def open_page(self, task: PageTask) -> list[Opened | None]:
        """Each message opened, or None where the resolver must open it itself."""
        if task.generation != self._generation:
            self.clear()
            self._generation, self._rules = task.generation, task.rules
        assert self._rules is not None
        return [self._open(data, version, task.keys, self._rules) for data, version in task.messages]

    def clear(self) -> None:
        """Forget every clear value (after an erasure)."""
        self._hash.cache.clear()
        self._identities.clear()
        e164.cache_clear()

    def _open(
        self, data: bytes, version: str, keys: Mapping[str, SubjectKeys], rules: Rules
    ) -> Opened | None:
        try:
            event = REGISTRY.decode(MessageCollected.type_name, data, int(version))
            if not isinstance(event, MessageCollected) or (found := keys.get(event.subject_id)) is None:
                return None
            return self._observe(event, found, rules)
        except Exception:  # the resolver opens it again, and meets the error itself
            return None

    def _observe(self, event: MessageCollected, keys: SubjectKeys, rules: Rules) -> Opened:
        try:
            payload: dict[str, Any] | None = decrypt_value_with(keys, event.payload, context=PAYLOAD_CONTEXT)
        except (KeyErased, DecryptionFailed):
            payload = None
        return opened_from(event, payload, rules, self._identities, self._hash)


def opened_from(
    event: MessageCollected,
    payload: Mapping[str, Any] | None,
    rules: Rules,
    identities: IdentitiesCache,
    hasher: Hasher,
) -> Opened:
    """What observing needs of a message whose payload was decrypted (None: shredded), wherever it was opened:
    its usable identifiers, an alias's previousId, an identify's traits."""
    if payload is None:
        found: tuple[Identity, ...] | None = None
        previous = None
        traits: Any = {}
    else:
        found = identities.identities(payload, rules, hasher)
        previous = previous_of(payload, rules, hasher) if event.message_type == "alias" else None
        traits = payload.get("traits") if event.message_type == "identify" else None
    return Opened(
        event.message_id,
        event.message_type,
        event.timestamp,
        event.source_id,
        event.event_name,
        found,
        previous,
        traits if isinstance(traits, dict) else {},
    )


_opener: Opener | None = None
"""The worker process's opener (set by `_start`)."""


def _start(hasher: Hasher, parent: int) -> None:
    global _opener
    _exit_with(parent)  # the parent's pid as it passed it: it may have died while this worker was starting
    _opener = Opener(hasher)


PARENT_CHECK_SECONDS = 0.5


def _exit_with(parent: int) -> None:
    """End this worker as soon as its parent is gone (a kill -9 of identity must leave no orphan behind).

    Polling `getppid` rather than PR_SET_PDEATHSIG: that signal fires when the parent *thread* that forked ends,
    and the pool is started from whichever worker thread ran the catch-up. Once this worker is gone, the last
    holder of the resource tracker's pipe is gone too, so the tracker exits as well.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _open_page(task: PageTask) -> list[Opened | None]:
    assert _opener is not None, "the worker was not started"
    return _opener.open_page(task)


def _clear() -> None:
    if _opener is not None:
        _opener.clear()


class OpenerProcess:
    """One worker process opening pages; started per catch-up with a backlog, shut down after it."""

    def __init__(self, hasher: Hasher) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and connections
        self._pool = ProcessPoolExecutor(
            1, mp_context=context, initializer=_start, initargs=(hasher, os.getpid())
        )

    @staticmethod
    def can_take(hasher: Hasher) -> bool:
        """Whether the hasher can be sent to a worker (a `SubjectIds` can; a test's lambda cannot)."""
        try:
            pickle.dumps(hasher)
        except (pickle.PicklingError, TypeError, AttributeError):
            return False
        return True

    def open_page(self, task: PageTask) -> Future[list[Opened | None]]:
        """The page opened in the worker."""
        return self._pool.submit(_open_page, task)

    def clear(self) -> None:
        """Have the worker forget every clear value it holds (after an erasure)."""
        self._pool.submit(_clear)

    def close(self) -> None:
        """Stop the worker without waiting for pages nobody will use."""
        self._pool.shutdown(wait=False, cancel_futures=True)
