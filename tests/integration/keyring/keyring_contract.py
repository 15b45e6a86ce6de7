"""The keyring contract: written once, run against every key store (subclass and implement `new_store`)."""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cdp.keyring import (
    DecryptionFailed,
    Keyring,
    KeyStore,
    MasterKeys,
    SubjectErased,
    SubjectIds,
    parse_master_key,
)
from cdp.keyring.master import MasterKey

OLD_MASTER = parse_master_key("11" * 32)
NEW_MASTER = parse_master_key("22" * 32)
IDS = SubjectIds(b"contract-test-subject-secret-32b")


class Clock:
    """A clock the test moves by hand, to expire cache entries without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def subject(n: int) -> str:
    """A subject id for user number n."""
    return IDS("user_id", f"user-{n}")


class KeyringContract(abc.ABC):
    """Every key store must make the keyring behave exactly like this."""

    stores: list[KeyStore]

    @abc.abstractmethod
    def new_store(self) -> KeyStore:
        """A store over the same shared database as every other store of this test."""

    @pytest.fixture(autouse=True)
    def _close_stores(self) -> Iterator[None]:
        self.stores = []
        yield
        for store in self.stores:
            store.close()

    @abc.abstractmethod
    def key_rows(self, subject: str) -> int:
        """How many key rows physically exist for the subject (tombstone or not)."""

    def keyring(
        self, master: MasterKey = OLD_MASTER, *retired: MasterKey, clock: Callable[[], float] = time.monotonic
    ) -> Keyring:
        """A fresh keyring (own cache, own connections) over the shared database."""
        store = self.new_store()
        self.stores.append(store)
        return Keyring(store, MasterKeys(master, retired), clock=clock)

    def test_round_trip(self) -> None:
        ring = self.keyring()
        sealed = ring.encrypt(subject(1), b"jane@example.com", aad=b"MessageCollected")
        assert b"jane" not in sealed
        assert ring.decrypt(subject(1), sealed, aad=b"MessageCollected") == b"jane@example.com"

    def test_another_instance_reads_what_one_wrote(self) -> None:
        sealed = self.keyring().encrypt(subject(1), b"secret")
        assert self.keyring().decrypt(subject(1), sealed) == b"secret"

    def test_wrong_subject_or_aad_fails(self) -> None:
        ring = self.keyring()
        sealed = ring.encrypt(subject(1), b"secret", aad=b"a")
        ring.data_keys([subject(2)])
        with pytest.raises(DecryptionFailed):
            ring.decrypt(subject(2), sealed, aad=b"a")
        with pytest.raises(DecryptionFailed):
            ring.decrypt(subject(1), sealed, aad=b"b")

    def test_fields_cannot_be_swapped(self) -> None:
        ring = self.keyring()
        sealed = ring.encrypt_fields(
            subject(1), {"email": "j@x.io", "name": "Jane"}, ["email", "name"], context="T"
        )
        swapped = {"email": sealed["name"], "name": sealed["email"]}
        with pytest.raises(DecryptionFailed):
            ring.decrypt_fields(subject(1), swapped, ["email", "name"], context="T")
        assert ring.decrypt_fields(subject(1), sealed, ["email", "name"], context="T") == {
            "email": "j@x.io",
            "name": "Jane",
        }

    def test_decrypt_never_creates_a_key(self) -> None:
        sealed = self.keyring().encrypt(subject(1), b"x")
        with pytest.raises(DecryptionFailed):
            self.keyring().decrypt(subject(3), sealed)
        assert subject(3) not in self.new_store_tracked().fetch([subject(3)])

    def test_shredded_data_cannot_be_read_back(self) -> None:
        ring = self.keyring()
        sealed = ring.encrypt(subject(1), b"secret")
        ring.shred(subject(1))
        with pytest.raises(SubjectErased):
            ring.decrypt(subject(1), sealed)
        with pytest.raises(SubjectErased):
            self.keyring().decrypt(subject(1), sealed)
        assert ring.is_erased(subject(1))
        assert self.key_rows(subject(1)) == 0

    def test_shredded_subject_cannot_be_rekeyed(self) -> None:
        ring = self.keyring()
        ring.encrypt(subject(1), b"secret")
        ring.shred(subject(1))
        for fresh in (ring, self.keyring()):
            with pytest.raises(SubjectErased):
                fresh.encrypt(subject(1), b"new data")
            assert fresh.data_keys([subject(1)])[subject(1)].erased
        state = self.new_store_tracked().fetch([subject(1)])[subject(1)]
        assert state.erased and state.keys == ()
        assert self.key_rows(subject(1)) == 0

    def test_shred_of_a_subject_never_seen_blocks_it_too(self) -> None:
        self.keyring().shred(subject(9))
        with pytest.raises(SubjectErased):
            self.keyring().encrypt(subject(9), b"x")

    def test_other_process_cache_expires_after_ttl(self) -> None:
        clock = Clock()
        reader = self.keyring(clock=clock)
        sealed = reader.encrypt(subject(1), b"secret")
        self.keyring().shred(subject(1))
        # Within the TTL a stale cache still answers: this is why services evict on SubjectErased.
        assert reader.decrypt(subject(1), sealed) == b"secret"
        clock.now += 61
        with pytest.raises(SubjectErased):
            reader.decrypt(subject(1), sealed)

    def test_evict_drops_the_cached_key_at_once(self) -> None:
        reader = self.keyring()
        sealed = reader.encrypt(subject(1), b"secret")
        self.keyring().shred(subject(1))
        reader.evict(subject(1))
        with pytest.raises(SubjectErased):
            reader.decrypt(subject(1), sealed)

    def test_batch_creates_many_keys_once(self) -> None:
        ring = self.keyring()
        subjects = [subject(n) for n in range(1200)]
        first = ring.data_keys(subjects)
        again = self.keyring().data_keys(reversed(subjects))
        assert len(first) == 1200
        assert all(first[s].keys == again[s].keys for s in subjects)
        assert len({first[s].keys[1] for s in subjects}) == 1200

    def test_concurrent_creation_converges_on_one_key(self) -> None:
        subjects = [subject(n) for n in range(40)]
        rings = [self.keyring() for _ in range(6)]
        results: list[dict[str, bytes]] = []
        barrier = threading.Barrier(len(rings))

        def create(ring: Keyring) -> None:
            barrier.wait()
            results.append({s: k.keys[1] for s, k in ring.data_keys(subjects).items()})

        threads = [threading.Thread(target=create, args=(ring,)) for ring in rings]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == len(rings)
        assert all(result == results[0] for result in results)

    def test_shred_racing_creation_leaves_no_key(self) -> None:
        subjects = [subject(n) for n in range(100, 160)]
        creator, shredder = self.keyring(), self.keyring()
        barrier = threading.Barrier(2)

        def create() -> None:
            barrier.wait()
            for s in subjects:
                with contextlib.suppress(SubjectErased):
                    creator.data_keys([s])

        def shred() -> None:
            barrier.wait()
            for s in subjects:
                shredder.shred(s)

        threads = [threading.Thread(target=create), threading.Thread(target=shred)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = self.new_store_tracked().fetch(subjects)
        assert all(stored[s].erased for s in subjects)
        assert sum(self.key_rows(s) for s in subjects) == 0

    def test_master_key_rotation_rewraps_every_key(self) -> None:
        sealed = self.keyring(OLD_MASTER).encrypt(subject(1), b"secret")
        self.keyring(OLD_MASTER).data_keys([subject(n) for n in range(2, 30)])
        assert self.keyring(NEW_MASTER, OLD_MASTER).rewrap(batch_size=7) == 29
        assert self.keyring(NEW_MASTER).decrypt(subject(1), sealed) == b"secret"
        assert self.keyring(NEW_MASTER, OLD_MASTER).rewrap() == 0

    def test_new_keys_are_wrapped_by_the_current_master(self) -> None:
        self.keyring(NEW_MASTER, OLD_MASTER).data_keys([subject(1)])
        assert (
            self.new_store_tracked().fetch([subject(1)])[subject(1)].keys[0].master_key_id
            == NEW_MASTER.key_id
        )

    def test_raw_identifiers_are_refused(self) -> None:
        with pytest.raises(ValueError):
            self.keyring().encrypt("jane@example.com", b"x")

    def new_store_tracked(self) -> KeyStore:
        """A store closed at teardown."""
        store = self.new_store()
        self.stores.append(store)
        return store
