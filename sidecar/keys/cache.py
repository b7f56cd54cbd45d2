"""An in-process, bounded cache of verified keys, keyed by the key's HMAC.

Freshness rules:
- While the revocation subscription is healthy (``synced``), an entry younger than
  ``ttl`` is trusted without asking Redis; a revocation evicts it at once.
- While it is not, nothing is trusted as fresh: every request asks Redis. If Redis
  is unreachable, an entry verified less than ``stale_window`` ago may still serve
  (also when that is longer than ``ttl``: entries are kept for the longer of the two).
- Unknown keys are remembered for ``negative_ttl``, so repeating one costs no Redis
  round trip (a key cannot become known later: new keys are random).
- Every eviction bumps ``epoch``; a lookup started before an eviction does not
  store its (possibly outdated) answer, so a revocation racing a lookup wins.
- An entry carries the key's expiry (``VerifiedKey.expires_at``: its ``expires_at``,
  or the end of a rotation's grace, which the rotation publishes like a revocation).
  The authenticator checks it on every use, fresh or stale, so no entry lets a key
  work past its expiry on any instance, and none needs a message to stop it then.
- A published revocation or rotation also leaves a *hold*: what the key must look like
  from then on (revoked; or usable until the end of the grace). A Redis failover can
  undo an acknowledged write (the old master had it, the promoted replica did not);
  for ``HOLD_SECONDS`` this instance answers as if Redis showed the key at least that
  restricted (``confirmed``). Holding to it costs nothing when it did: revocation is
  final and a rotation's grace is never extended. The revoking instance meanwhile
  runs the revocation again on the new master (store.py ``confirm_revocations``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sidecar.core.domain import VerifiedKey

V = TypeVar("V")

log = logging.getLogger("sidecar.keycache")

# How long a hold lasts: a failover and the re-application that follows it take ~15 s
# here, ~35 s with Sentinel's default down-after-milliseconds (30 s). Kept short
# because every revocation holds one (a soak revoking 40 keys a second holds ~12,000).
HOLD_SECONDS = 300.0
REVOKED = 0.0  # a hold's ``usable_until`` for a revoked key


@dataclass(slots=True)
class _Entry:
    key: VerifiedKey
    verified_at: float


@dataclass(slots=True)
class _Hold:
    usable_until: float  # epoch seconds; REVOKED: not at all
    ends: float  # on the cache's clock


class KeyCache:
    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        negative_ttl: float,
        stale_window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._negative_ttl = negative_ttl
        self._stale_window = stale_window
        self._keep = max(ttl, stale_window)  # past this an entry is of no use at all
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._negative: dict[str, float] = {}
        self._holds: dict[str, _Hold] = {}
        self.held_back = 0  # lookups Redis answered less restricted than a hold: metrics
        self.epoch = 0
        self.synced = False
        # Told of every eviction (the key's hash; None: all of them), e.g. to close the
        # WebSockets a revoked key opened (websocket.py).
        self.on_evict: list[Callable[[str | None], None]] = []
        # Told each time the revocation feed is found lost (again while it stays lost):
        # no eviction would arrive meanwhile (websocket.py bounds open sockets then).
        self.on_desync: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key_hash: str) -> VerifiedKey | None:
        entry = self._entries.get(key_hash)
        if entry is None or not self.synced:
            return None
        age = self._clock() - entry.verified_at
        if age >= self._ttl:
            if age >= self._keep:  # an entry past the TTL may still serve as stale
                del self._entries[key_hash]
            return None
        return entry.key

    def stale(self, key_hash: str) -> VerifiedKey | None:
        entry = self._entries.get(key_hash)
        if entry is None or self._clock() - entry.verified_at >= self._stale_window:
            return None
        return entry.key

    def known_unknown(self, key_hash: str) -> bool:
        expiry = self._negative.get(key_hash)
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._negative[key_hash]
            return False
        return True

    def put(self, key_hash: str, key: VerifiedKey, epoch: int) -> None:
        if epoch != self.epoch:
            return
        now = self._clock()
        keep = self._keep
        _drop_leading(self._entries, lambda entry: now - entry.verified_at >= keep)
        _bounded_insert(self._entries, key_hash, _Entry(key, now), self._max)

    def put_unknown(self, key_hash: str, epoch: int) -> None:
        if epoch != self.epoch or self._negative_ttl <= 0:
            return
        now = self._clock()
        _drop_leading(self._negative, lambda expiry: now >= expiry)
        _bounded_insert(self._negative, key_hash, now + self._negative_ttl, self._max)

    def evict(self, key_hash: str) -> None:
        self.epoch += 1
        self._entries.pop(key_hash, None)
        self._negative.pop(key_hash, None)
        for listener in self.on_evict:
            listener(key_hash)

    def hold(self, key_hash: str, usable_until: float) -> None:
        """A revocation (``usable_until`` REVOKED) or a rotation (the end of its grace,
        epoch seconds) of this key was published: hold to it (see the module doc)."""
        now = self._clock()
        _drop_leading(self._holds, lambda hold: now >= hold.ends)
        _bounded_insert(self._holds, key_hash, _Hold(usable_until, now + HOLD_SECONDS), self._max)

    def confirmed(self, key_hash: str, key: VerifiedKey) -> VerifiedKey:
        """``key`` as Redis has it, restricted by this key's hold when Redis shows less.

        A hold is kept for its whole life even once Redis agrees: the Redis that agreed
        may be a master about to be deposed, whose writes its successor never got."""
        hold = self._holds.get(key_hash)
        if hold is None:
            return key
        if self._clock() >= hold.ends:
            del self._holds[key_hash]
            return key
        until = hold.usable_until
        if not key.active or (key.expires_at is not None and key.expires_at <= until):
            return key  # Redis shows it
        self.held_back += 1
        log.warning(
            "key %s: Redis shows it %s, but its %s was published here; holding to that "
            "(a failover may have lost the write)",
            key.prefix,
            "active" if key.expires_at is None else "usable until later",
            "revocation" if until == REVOKED else "rotation",
        )
        if until == REVOKED:
            return dataclasses.replace(key, active=False)
        return dataclasses.replace(key, expires_at=until)

    def desync(self) -> None:
        """The revocation feed is lost: stop trusting entries as fresh."""
        self.epoch += 1
        self.synced = False
        for listener in self.on_desync:
            listener()

    def resync(self) -> None:
        """The feed is back; messages may have been missed meanwhile, so start over."""
        self.epoch += 1
        self._entries.clear()
        self._negative.clear()
        self.synced = True
        for listener in self.on_evict:
            listener(None)


def _drop_leading(table: dict[str, V], dead: Callable[[V], bool]) -> None:
    """Drop the entries of no more use from the front. Insertion order is age order (a
    re-put moves an entry to the end), so a table holds the keys seen within its
    lifetime, not every key ever seen up to its bound: a soak creating keys at 40/s grew
    the cache by 0.5 MB a minute, towards 100,000 entries that could never serve."""
    while table:
        oldest = next(iter(table))
        if not dead(table[oldest]):
            return
        del table[oldest]


def _bounded_insert(table: dict[str, V], key: str, value: V, limit: int) -> None:
    table.pop(key, None)
    if len(table) >= limit:
        del table[next(iter(table))]  # oldest insertion first
    table[key] = value
