"""The key cache: TTL, size bound, eviction."""

from __future__ import annotations

from cdp.keyring import KeyCache, SubjectKeys


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keys(n: int) -> SubjectKeys:
    return SubjectKeys(f"{n:032x}", keys={1: bytes(32)})


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = KeyCache(ttl=60, clock=clock)
    cache.put(keys(1))
    clock.now += 59.9
    assert cache.get(keys(1).subject) == keys(1)
    clock.now += 0.1
    assert cache.get(keys(1).subject) is None


def test_size_bound_evicts_least_recently_used() -> None:
    cache = KeyCache(max_size=2)
    cache.put(keys(1))
    cache.put(keys(2))
    cache.get(keys(1).subject)
    cache.put(keys(3))
    assert len(cache) == 2
    assert cache.get(keys(2).subject) is None
    assert cache.get(keys(1).subject) is not None


def test_evict_and_clear() -> None:
    cache = KeyCache()
    cache.put(keys(1))
    cache.put(keys(2))
    cache.evict(keys(1).subject)
    assert cache.get(keys(1).subject) is None
    cache.clear()
    assert len(cache) == 0


def test_zero_ttl_disables_caching() -> None:
    cache = KeyCache(ttl=0)
    cache.put(keys(1))
    assert cache.get(keys(1).subject) is None
