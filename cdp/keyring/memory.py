"""An in-memory key store for unit tests: the same semantics as the SQL store, no I/O."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from cdp.keyring.store import ERASED, KeyStore, StoredSubject, WrappedKey


class InMemoryKeyStore(KeyStore):
    """Keeps rows in dicts behind a lock."""

    def __init__(self) -> None:
        self._keys: dict[str, dict[int, WrappedKey]] = {}
        self._erased: set[str] = set()
        self._lock = threading.Lock()

    def fetch(self, subjects: Sequence[str]) -> dict[str, StoredSubject]:
        """The stored state of each known subject."""
        with self._lock:
            return {s: state for s in subjects if (state := self._state(s)) is not None}

    def create(self, keys: Mapping[str, WrappedKey]) -> dict[str, StoredSubject]:
        """Insert-or-ignore, refusing erased subjects."""
        with self._lock:
            for subject, key in keys.items():
                if subject not in self._erased:
                    self._keys.setdefault(subject, {}).setdefault(key.version, key)
            return {s: state for s in keys if (state := self._state(s)) is not None}

    def shred(self, subject: str) -> None:
        """Drop the keys, keep a tombstone."""
        with self._lock:
            self._keys.pop(subject, None)
            self._erased.add(subject)

    def wrapped_by_other(self, master_key_id: str, limit: int) -> list[tuple[str, WrappedKey]]:
        """Keys whose wrapping is not `master_key_id`."""
        with self._lock:
            found = [
                (s, k)
                for s, ks in self._keys.items()
                for k in ks.values()
                if k.master_key_id != master_key_id
            ]
            return found[:limit]

    def replace_wrapping(self, subject: str, old: WrappedKey, new: WrappedKey) -> None:
        """Compare-and-swap one key."""
        with self._lock:
            keys = self._keys.get(subject, {})
            if keys.get(old.version) == old:
                keys[old.version] = new

    def close(self) -> None:
        """Nothing to release."""

    def _state(self, subject: str) -> StoredSubject | None:
        """Tombstone first: an erased subject never shows keys."""
        if subject in self._erased:
            return ERASED
        keys = self._keys.get(subject)
        return StoredSubject(False, tuple(keys[v] for v in sorted(keys))) if keys else None
