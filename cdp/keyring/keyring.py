"""The keyring: per-subject data keys, field encryption, and crypto-shredding."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from cdp.keyring import cipher
from cdp.keyring.cache import KeyCache, SubjectKeys
from cdp.keyring.errors import DecryptionFailed
from cdp.keyring.master import MasterKeys
from cdp.keyring.store import KeyStore, StoredSubject, WrappedKey
from cdp.keyring.subjects import check_subject_id

FIRST_VERSION = 1


class Keyring:
    """Encrypts and decrypts per subject; `shred` makes a subject's data unreadable everywhere, for good.

    Methods that may touch the key store block; asyncio callers `await prefetch(subjects)` first (one
    transaction in a worker thread), after which encrypt/decrypt of those subjects are pure CPU while cached.
    """

    def __init__(
        self,
        store: KeyStore,
        master: MasterKeys,
        *,
        cache_ttl: float = 60.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._master = master
        self._cache = KeyCache(cache_ttl, cache_size, clock)
        self._fetcher = _SharedFetch(self.data_keys)

    def data_keys(self, subjects: Iterable[str]) -> dict[str, SubjectKeys]:
        """Keys of many subjects, creating missing ones, with at most one read and one write transaction."""
        wanted = [check_subject_id(s) for s in dict.fromkeys(subjects)]
        found = {s: keys for s in wanted if (keys := self._cache.get(s)) is not None}
        missing = [s for s in wanted if s not in found]
        if missing:
            stored = self._store.fetch(missing)
            absent = [s for s in missing if s not in stored]
            if absent:
                stored.update(self._store.create({s: self._new_key(s) for s in absent}))
            found.update(self._remember(stored))
        return found

    async def prefetch(self, subjects: Iterable[str]) -> dict[str, SubjectKeys]:
        """`data_keys` for asyncio callers about to encrypt a batch: no thread hop when every key is cached,
        and concurrent callers' missing keys are fetched or created together, in one transaction (whose
        fsync is then shared, as in a group commit)."""
        wanted = list(dict.fromkeys(subjects))
        found = {s: keys for s in wanted if (keys := self._cache.get(s)) is not None}
        if len(found) < len(wanted):
            found.update(await self._fetcher.get([s for s in wanted if s not in found]))
        return found

    def encrypt(self, subject: str, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        """Seal bytes under the subject's current key; SubjectErased if the subject was shredded."""
        keys = self.data_keys([subject])[subject]
        version = keys.current_version
        return cipher.seal(keys.keys[version], version, subject, plaintext, aad)

    def decrypt(self, subject: str, ciphertext: bytes, *, aad: bytes = b"") -> bytes:
        """Open bytes sealed for this subject and aad; SubjectErased once shredded, else DecryptionFailed."""
        version = cipher.key_version(ciphertext)
        key = self._existing_keys(subject).key(version)
        if key is None:
            raise DecryptionFailed(f"no data key version {version} for this subject")
        return cipher.open_sealed(key, subject, ciphertext, aad)

    def encrypt_value(self, subject: str, value: Any, *, context: str) -> str:
        """A JSON-able value sealed and base64-encoded, for a string field of an event."""
        plaintext = _json(value)
        return base64.b64encode(self.encrypt(subject, plaintext, aad=context.encode())).decode("ascii")

    def decrypt_value(self, subject: str, token: str, *, context: str) -> Any:
        """The JSON value `encrypt_value` sealed with the same subject and context."""
        return _parse(self.decrypt(subject, _unbase64(token), aad=context.encode()))

    def encrypt_fields(
        self, subject: str, mapping: Mapping[str, Any], fields: Iterable[str], *, context: str
    ) -> dict[str, Any]:
        """A copy of `mapping` with each named field present replaced by its ciphertext (bound to its name)."""
        result = dict(mapping)
        for name in fields:
            if name in result:
                result[name] = self.encrypt_value(subject, result[name], context=f"{context}#{name}")
        return result

    def decrypt_fields(
        self, subject: str, mapping: Mapping[str, Any], fields: Iterable[str], *, context: str
    ) -> dict[str, Any]:
        """The inverse of `encrypt_fields`."""
        result = dict(mapping)
        for name in fields:
            if name in result:
                result[name] = self.decrypt_value(subject, result[name], context=f"{context}#{name}")
        return result

    def shred(self, subject: str) -> None:
        """Destroy the subject's keys and leave a tombstone; data sealed for it is unreadable from now on."""
        self._store.shred(check_subject_id(subject))
        self._cache.evict(subject)

    def is_erased(self, subject: str) -> bool:
        """Whether the subject was shredded (consults the store unless the answer is cached)."""
        cached = self._cache.get(subject)
        if cached is not None:
            return cached.erased
        stored = self._store.fetch([check_subject_id(subject)]).get(subject)
        return stored is not None and stored.erased

    def evict(self, subject: str) -> None:
        """Drop a subject's cached keys; services call this when a SubjectErased event arrives."""
        self._cache.evict(subject)

    def rewrap(self, batch_size: int = 500) -> int:
        """Re-wrap every key still under a retired master key with the current one; returns how many."""
        current = self._master.current
        done = 0
        while batch := self._store.wrapped_by_other(current.key_id, batch_size):
            for subject, old in batch:
                data_key = cipher.unwrap(
                    self._master.get(old.master_key_id), subject, old.version, old.wrapped
                )
                new = WrappedKey(
                    old.version, current.key_id, cipher.wrap(current, subject, old.version, data_key)
                )
                self._store.replace_wrapping(subject, old, new)
                done += 1
        return done

    def close(self) -> None:
        """Forget cached keys and release the store."""
        self._cache.clear()
        self._store.close()

    def _existing_keys(self, subject: str) -> SubjectKeys:
        """Keys for reading: never creates a key (reading cannot need one that was never made)."""
        cached = self._cache.get(check_subject_id(subject))
        if cached is not None:
            return cached
        stored = self._store.fetch([subject]).get(subject)
        if stored is None:
            raise DecryptionFailed("this subject has no data key")
        return self._remember({subject: stored})[subject]

    def _new_key(self, subject: str) -> WrappedKey:
        """A fresh data key wrapped by the current master key."""
        current = self._master.current
        wrapped = cipher.wrap(current, subject, FIRST_VERSION, cipher.new_data_key())
        return WrappedKey(FIRST_VERSION, current.key_id, wrapped)

    def _remember(self, stored: Mapping[str, StoredSubject]) -> dict[str, SubjectKeys]:
        """Unwrap stored keys and cache them (erasure is permanent, so caching it is safe too)."""
        result = {subject: self._unwrap(subject, state) for subject, state in stored.items()}
        for keys in result.values():
            self._cache.put(keys)
        return result

    def _unwrap(self, subject: str, state: StoredSubject) -> SubjectKeys:
        """Unwrap each version with the master key that wrapped it."""
        if state.erased:
            return SubjectKeys(subject, erased=True)
        keys = {
            k.version: cipher.unwrap(self._master.get(k.master_key_id), subject, k.version, k.wrapped)
            for k in state.keys
        }
        return SubjectKeys(subject, keys=keys)


def decrypt_value_with(keys: SubjectKeys, token: str, *, context: str) -> Any:
    """`Keyring.decrypt_value` given the subject's keys (already fetched, e.g. by another process).

    Raises as the keyring does: SubjectErased once shredded, DecryptionFailed for anything that does not open.
    """
    ciphertext = _unbase64(token)
    version = cipher.key_version(ciphertext)
    key = keys.key(version)
    if key is None:
        raise DecryptionFailed(f"no data key version {version} for this subject")
    return _parse(cipher.open_sealed(key, keys.subject, ciphertext, context.encode()))


def _unbase64(token: str) -> bytes:
    try:
        return base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError) as error:
        raise DecryptionFailed("encrypted value is not base64") from error


def _json(value: Any) -> bytes:
    """Compact UTF-8 JSON; orjson is fast but refuses integers beyond 64 bits, which JSON input may hold."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


_LONG_NUMBER = re.compile(rb"\d{19}")


def _parse(data: bytes) -> Any:
    """JSON back to values; orjson would turn integers beyond 64 bits into floats, so those go the slow way."""
    return json.loads(data) if _LONG_NUMBER.search(data) else orjson.loads(data)


class _SharedFetch:
    """Runs `fetch` in a worker thread for everything asked while the previous run was under way."""

    def __init__(self, fetch: Callable[[list[str]], dict[str, SubjectKeys]]) -> None:
        self._fetch = fetch
        self._waiting: dict[str, asyncio.Future[SubjectKeys]] = {}
        self._running: asyncio.Task[None] | None = None

    async def get(self, subjects: list[str]) -> dict[str, SubjectKeys]:
        """The keys of these subjects, fetched or created in the next shared run."""
        loop = asyncio.get_running_loop()
        futures = {}
        for subject in subjects:
            future = self._waiting.get(subject)
            if future is None or future.get_loop() is not loop:
                future = self._waiting[subject] = loop.create_future()
            futures[subject] = future
        if self._running is None or self._running.done() or self._running.get_loop() is not loop:
            self._running = loop.create_task(self._run())
        # gather, not one await after the other: when the shared run fails, every future holds the error, and
        # those not awaited would be reported as "Future exception was never retrieved".
        keys = await asyncio.gather(*futures.values())
        return dict(zip(futures, keys, strict=True))

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                keys = await asyncio.to_thread(self._fetch, list(batch))
            except Exception as error:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(error)
                continue
            for subject, future in batch.items():
                if not future.done():
                    future.set_result(keys[subject])
