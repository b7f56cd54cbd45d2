"""Use bookkeeping off the hot path: ``last_used_at``, per-key, per-UTC-day counts of
requests and 429s, and the client addresses keys are used from are gathered in memory
and written to Redis in one pipelined round trip every flush interval (so a request
costs no Redis command of its own). Addresses become their /24 or /64 network at the
flush, not per request."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sidecar.core.domain import usage_network
from sidecar.core.errors import StoreUnavailable
from sidecar.core.periodic import flush_every
from sidecar.core.timeutil import to_iso, utc_day
from sidecar.keys.store import KeyStore
from sidecar.keys.usage_calls import NetworkCounts, UsageCounts

log = logging.getLogger("sidecar.usage")

_DAY = 86400
# Distinct (key, day, client address) held between flushes; past it, new ones are not
# counted until the next flush (a flood of addresses must not grow memory unbounded).
MAX_ADDRESSES = 50_000


class UsageTracker:
    def __init__(self, store: KeyStore, flush_interval: float) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: dict[str, float] = {}  # key id → last use, epoch seconds
        self._counts: dict[tuple[str, int], list[int]] = {}  # (key id, day) → [requests, 429s]
        # (key id, day, client address) → [requests, last use]
        self._addresses: dict[tuple[str, int, str], list[float]] = {}
        self.addresses_dropped = 0

    def record(self, key_id: str, now: float) -> None:
        """A request authenticated by the key at ``now`` (epoch seconds)."""
        self._pending[key_id] = now
        slot = (key_id, int(now // _DAY))
        counts = self._counts.get(slot)
        if counts is None:
            self._counts[slot] = [1, 0]
        else:
            counts[0] += 1

    def used_from(self, key_id: str, address: str | None, now: float) -> None:
        """A request authenticated by the key came from ``address`` (the client's, as
        the failed-auth limit sees it)."""
        if address is None:
            return
        slot = (key_id, int(now // _DAY), address)
        seen = self._addresses.get(slot)
        if seen is not None:
            seen[0] += 1
            seen[1] = now
        elif len(self._addresses) < MAX_ADDRESSES:
            self._addresses[slot] = [1, now]
        else:
            self.addresses_dropped += 1

    def rate_limited(self, key_id: str, now: float) -> None:
        """A request already recorded was refused with 429."""
        self._counts.setdefault((key_id, int(now // _DAY)), [0, 0])[1] += 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        counts, self._counts = self._counts, {}
        addresses, self._addresses = self._addresses, {}
        stamps = {k: to_iso(datetime.fromtimestamp(t, UTC)) for k, t in pending.items()}
        daily = [
            UsageCounts(key_id, utc_day(day * _DAY), requests, limited)
            for (key_id, day), (requests, limited) in counts.items()
        ]
        try:
            await self._store.touch(stamps, daily, _networks(addresses))
        except StoreUnavailable:
            # Keep them for the next round. Counts are added with HINCRBY, so a flush
            # that failed after Redis applied it would count twice: accepted, as the
            # alternative (dropping them) undercounts every failed flush.
            for key_id, moment in pending.items():
                self._pending.setdefault(key_id, moment)
            for slot, (requests, limited) in counts.items():
                kept = self._counts.setdefault(slot, [0, 0])
                kept[0] += requests
                kept[1] += limited
            for address_slot, (uses, last) in addresses.items():
                seen = self._addresses.setdefault(address_slot, [0, last])
                seen[0] += uses
                seen[1] = max(seen[1], last)
            log.warning("usage flush failed: Redis unavailable; will retry")

    async def run(self) -> None:
        await flush_every(self._interval, self.flush, self._holds_anything)

    def _holds_anything(self) -> bool:
        return bool(self._pending or self._counts or self._addresses)


def _networks(addresses: dict[tuple[str, int, str], list[float]]) -> list[NetworkCounts]:
    """The addresses' uses added up by key, day and network."""
    grouped: dict[tuple[str, int, str], list[float]] = {}
    for (key_id, day, address), (requests, last) in addresses.items():
        network = usage_network(address)
        if network is None:
            continue
        seen = grouped.setdefault((key_id, day, network), [0, last])
        seen[0] += requests
        seen[1] = max(seen[1], last)
    return [
        NetworkCounts(key_id, utc_day(day * _DAY), network, int(requests), last)
        for (key_id, day, network), (requests, last) in grouped.items()
    ]
