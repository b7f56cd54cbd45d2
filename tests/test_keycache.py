"""keycache.py: freshness, staleness, negative entries, epochs, bounds (pure, fake clock)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from sidecar.core.domain import VerifiedKey
from sidecar.keys.cache import HOLD_SECONDS, REVOKED, KeyCache

KEY = VerifiedKey(id="id-1", user_id="u", prefix="sk_live_abcdef", active=True, expires_at=None)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    clock: Clock,
    *,
    ttl: float = 60,
    stale_window: float = 30,
    negative_ttl: float = 5,
    max_entries: int = 100,
    synced: bool = True,
) -> KeyCache:
    cache = KeyCache(
        ttl=ttl,
        max_entries=max_entries,
        negative_ttl=negative_ttl,
        stale_window=stale_window,
        clock=clock,
    )
    if synced:
        cache.resync()
    return cache


@pytest.mark.parametrize(
    ("ttl", "stale_window", "age", "fresh", "stale"),
    [
        (60, 30, 0, True, True),
        (60, 30, 29.9, True, True),
        (60, 30, 30, True, False),
        (60, 30, 59.9, True, False),
        (60, 30, 60, False, False),
        # A TTL shorter than the stale window: past the TTL the entry still serves as
        # stale (when Redis is down), until the stale window ends.
        (1, 30, 0.5, True, True),
        (1, 30, 1, False, True),
        (1, 30, 29.9, False, True),
        (1, 30, 30, False, False),
        (60, 0, 0, True, False),  # stale_window 0 turns stale serving off
    ],
)
def test_fresh_and_stale_by_age(
    ttl: float, stale_window: float, age: float, fresh: bool, stale: bool
) -> None:
    clock = Clock()
    cache = make(clock, ttl=ttl, stale_window=stale_window)
    cache.put("h", KEY, cache.epoch)
    clock.now += age
    assert (cache.fresh("h") is KEY) is fresh
    assert (cache.stale("h") is KEY) is stale  # asking fresh() first must not lose it


def test_nothing_is_fresh_while_the_revocation_feed_is_down() -> None:
    clock = Clock()
    cache = make(clock)
    cache.put("h", KEY, cache.epoch)
    cache.desync()
    assert not cache.synced
    assert cache.fresh("h") is None
    assert cache.stale("h") is KEY  # still usable when Redis itself is unreachable
    cache.put("g", KEY, cache.epoch)  # verified against Redis meanwhile: kept for stale use
    assert cache.fresh("g") is None and cache.stale("g") is KEY


def test_a_new_cache_trusts_nothing_until_the_feed_is_up() -> None:
    cache = make(Clock(), synced=False)
    cache.put("h", KEY, cache.epoch)
    assert cache.fresh("h") is None
    cache.resync()
    assert cache.fresh("h") is None  # resync starts over: messages may have been missed


def test_resync_clears_positive_and_negative_entries() -> None:
    cache = make(Clock())
    cache.put("h", KEY, cache.epoch)
    cache.put_unknown("n", cache.epoch)
    cache.desync()
    cache.resync()
    assert cache.synced
    assert cache.fresh("h") is None and cache.stale("h") is None
    assert not cache.known_unknown("n")
    assert len(cache) == 0


Step = Callable[[KeyCache], None]


@pytest.mark.parametrize(
    ("during_lookup", "stored"),
    [
        (lambda cache: None, True),
        (lambda cache: cache.evict("h"), False),  # a revocation racing the lookup wins
        (lambda cache: cache.evict("other"), False),  # any eviction: epochs are global
        (lambda cache: cache.desync(), False),
        (lambda cache: (cache.desync(), cache.resync()), False),
    ],
)
def test_a_lookup_that_raced_an_eviction_is_not_stored(during_lookup: Step, stored: bool) -> None:
    cache = make(Clock())
    epoch = cache.epoch  # taken before the Redis round trip ...
    during_lookup(cache)  # ... while this happened ...
    cache.put("h", KEY, epoch)  # ... and stored after it
    cache.put_unknown("n", epoch)
    assert (cache.stale("h") is KEY) is stored
    assert cache.known_unknown("n") is stored


def test_evict_removes_the_key_from_both_tables() -> None:
    cache = make(Clock())
    cache.put("h", KEY, cache.epoch)
    cache.put_unknown("h2", cache.epoch)
    cache.evict("h")
    cache.evict("h2")
    assert cache.fresh("h") is None and cache.stale("h") is None
    assert not cache.known_unknown("h2")


@pytest.mark.parametrize(
    ("negative_ttl", "age", "known"),
    [(5, 0, True), (5, 4.9, True), (5, 5, False), (0, 0, False)],
)
def test_negative_entries_expire(negative_ttl: float, age: float, known: bool) -> None:
    clock = Clock()
    cache = make(clock, negative_ttl=negative_ttl)
    cache.put_unknown("n", cache.epoch)
    clock.now += age
    assert cache.known_unknown("n") is known


def test_tables_are_bounded_oldest_first() -> None:
    cache = make(Clock(), max_entries=3)
    for name in "abcd":
        cache.put(name, KEY, cache.epoch)
        cache.put_unknown("n" + name, cache.epoch)
    assert len(cache) == 3
    assert cache.fresh("a") is None
    assert all(cache.fresh(name) is KEY for name in "bcd")
    assert not cache.known_unknown("na")
    assert all(cache.known_unknown("n" + name) for name in "bcd")


def test_re_putting_a_key_refreshes_it_and_its_age() -> None:
    clock = Clock()
    cache = make(clock, ttl=10, max_entries=2)
    cache.put("a", KEY, cache.epoch)
    cache.put("b", KEY, cache.epoch)
    clock.now += 9
    cache.put("a", KEY, cache.epoch)  # re-verified: now the newest
    cache.put("c", KEY, cache.epoch)  # evicts b, the oldest insertion
    clock.now += 5
    assert cache.fresh("a") is KEY
    assert cache.fresh("b") is None


def test_entries_of_no_more_use_are_dropped_as_new_ones_arrive() -> None:
    clock = Clock()
    cache = make(clock, ttl=10, stale_window=30, negative_ttl=5)
    for name in "abc":
        cache.put(name, KEY, cache.epoch)
        cache.put_unknown("n" + name, cache.epoch)
    clock.now += 29  # still within the stale window: all kept, unknowns expired
    cache.put("d", KEY, cache.epoch)
    cache.put_unknown("nd", cache.epoch)
    assert len(cache) == 4
    assert cache.stale("a") is KEY
    assert len(cache._negative) == 1
    clock.now += 1  # a, b, c are now too old to serve even as stale
    cache.put("e", KEY, cache.epoch)
    assert len(cache) == 2
    assert cache.stale("d") is KEY and cache.fresh("e") is KEY


def test_a_hold_restricts_what_redis_answers_for_its_whole_life() -> None:
    clock = Clock()
    cache = make(clock)
    cache.hold("h", REVOKED)
    assert cache.confirmed("h", KEY).active is False  # a failover lost the revocation
    revoked = replace(KEY, active=False)
    assert cache.confirmed("h", revoked) is revoked  # Redis shows it...
    # ...but that Redis may be deposed in turn, and its successor lack the write.
    assert cache.confirmed("h", KEY).active is False
    assert cache.held_back == 2
    clock.now += HOLD_SECONDS
    assert cache.confirmed("h", KEY) is KEY


def test_a_rotation_hold_caps_the_expiry_at_the_end_of_the_grace() -> None:
    clock = Clock()
    cache = make(clock)
    cache.hold("h", 5000.0)
    assert cache.confirmed("h", KEY).expires_at == 5000.0  # lost: no expiry in Redis
    assert cache.confirmed("h", replace(KEY, expires_at=9000.0)).expires_at == 5000.0
    earlier = replace(KEY, expires_at=4000.0)
    assert cache.confirmed("h", earlier) is earlier  # its own expiry came first


def test_holds_end_after_hold_seconds_and_stay_bounded() -> None:
    clock = Clock()
    cache = make(clock, max_entries=3)
    cache.hold("old", REVOKED)
    clock.now += HOLD_SECONDS
    cache.hold("new", REVOKED)  # drops the ended one from the front
    assert len(cache._holds) == 1
    for i in range(10):
        cache.hold(f"h{i}", REVOKED)
    assert cache.confirmed("h0", KEY) is KEY  # pushed out by the bound
    assert cache.confirmed("h9", KEY).active is False
