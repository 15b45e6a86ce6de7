"""A short-lived, size-bounded cache of unwrapped data keys, so the hot path rarely touches the key store."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cdp.keyring.errors import SubjectErased


@dataclass(frozen=True)
class SubjectKeys:
    """A subject's unwrapped data keys by version, or the fact that it was erased."""

    subject: str
    erased: bool = False
    keys: Mapping[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def current_version(self) -> int:
        """The version new ciphertext is sealed with; SubjectErased once shredded."""
        if self.erased or not self.keys:
            raise SubjectErased(self.subject)
        return max(self.keys)

    def key(self, version: int) -> bytes | None:
        """The key of one version; SubjectErased once shredded, None if that version never existed."""
        if self.erased:
            raise SubjectErased(self.subject)
        return self.keys.get(version)


class KeyCache:
    """LRU with a time-to-live; thread-safe because the keyring is used from worker threads."""

    def __init__(
        self, ttl: float = 60.0, max_size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self._ttl = ttl
        self._max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, SubjectKeys]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, subject: str) -> SubjectKeys | None:
        """The cached keys, or None when absent or older than the TTL."""
        with self._lock:
            entry = self._entries.get(subject)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self._ttl:
                del self._entries[subject]
                return None
            self._entries.move_to_end(subject)
            return entry[1]

    def put(self, keys: SubjectKeys) -> None:
        """Cache a subject's keys, evicting the least recently used beyond the size bound."""
        if self._ttl <= 0 or self._max_size <= 0:
            return
        with self._lock:
            self._entries[keys.subject] = (self._clock(), keys)
            self._entries.move_to_end(keys.subject)
            while len(self._entries) > self._max_size:
                self._entries.popitem(last=False)

    def evict(self, subject: str) -> None:
        """Forget one subject (e.g. on a SubjectErased event)."""
        with self._lock:
            self._entries.pop(subject, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
