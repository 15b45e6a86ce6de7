"""The key store port: where wrapped data keys and erasure tombstones live (apart from the event log)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WrappedKey:
    """One data key as stored: its version, the master key that wraps it, and the wrapped bytes."""

    version: int
    master_key_id: str
    wrapped: bytes


@dataclass(frozen=True)
class StoredSubject:
    """A subject's row set: its wrapped keys, or a tombstone (erased, no key material) once shredded."""

    erased: bool
    keys: tuple[WrappedKey, ...] = ()


ERASED = StoredSubject(erased=True)


class KeyStore(abc.ABC):
    """Persists wrapped data keys; shared by every process of a deployment."""

    @abc.abstractmethod
    def fetch(self, subjects: Sequence[str]) -> dict[str, StoredSubject]:
        """The stored state of each subject that has keys or a tombstone; unknown subjects are absent."""

    @abc.abstractmethod
    def create(self, keys: Mapping[str, WrappedKey]) -> dict[str, StoredSubject]:
        """Insert each key unless one exists or the subject is erased, then return what is stored."""

    @abc.abstractmethod
    def shred(self, subject: str) -> None:
        """Physically delete the subject's keys and record a tombstone; idempotent."""

    @abc.abstractmethod
    def wrapped_by_other(self, master_key_id: str, limit: int) -> list[tuple[str, WrappedKey]]:
        """Up to `limit` keys wrapped by a master key other than `master_key_id` (for rotation)."""

    @abc.abstractmethod
    def replace_wrapping(self, subject: str, old: WrappedKey, new: WrappedKey) -> None:
        """Swap one key's wrapping, only if the row still holds `old` (a concurrent shred wins)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
