"""Concurrent `prefetch` calls share one key-store transaction, as appends share a group commit."""

import asyncio
from collections.abc import Mapping

from cdp.keyring import InMemoryKeyStore, Keyring, MasterKeys, SubjectIds, parse_master_key
from cdp.keyring.store import StoredSubject, WrappedKey

IDS = SubjectIds(b"0123456789abcdef-secret")


class CountingStore(InMemoryKeyStore):
    """The in-memory store, counting the transactions it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.creates: list[int] = []

    def create(self, keys: Mapping[str, WrappedKey]) -> dict[str, StoredSubject]:
        self.creates.append(len(keys))
        return super().create(keys)


async def test_concurrent_callers_share_key_creation() -> None:
    store = CountingStore()
    ring = Keyring(store, MasterKeys(parse_master_key("ab" * 32)))
    subjects = [IDS("user_id", f"person-{n}") for n in range(200)]
    answers = await asyncio.gather(*(ring.prefetch([subject]) for subject in subjects))
    assert [list(answer) for answer in answers] == [[subject] for subject in subjects]
    assert sum(store.creates) == 200
    assert len(store.creates) <= 2, f"200 callers took {len(store.creates)} transactions"


async def test_a_cached_subject_needs_no_store_at_all() -> None:
    store = CountingStore()
    ring = Keyring(store, MasterKeys(parse_master_key("ab" * 32)))
    subject = IDS("user_id", "known")
    first = await ring.prefetch([subject, subject])
    again = await ring.prefetch([subject])
    assert first[subject] is again[subject]
    assert store.creates == [1]
