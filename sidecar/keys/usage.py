"""Use bookkeeping off the hot path: ``last_used_at`` and per-key, per-UTC-day counts
of requests and 429s are gathered in memory and written to Redis in one pipelined
round trip every flush interval (so a request costs no Redis command of its own)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sidecar.core.errors import StoreUnavailable
from sidecar.core.timeutil import to_iso, utc_day
from sidecar.keys.store import KeyStore, UsageCounts

log = logging.getLogger("sidecar.usage")

_DAY = 86400


class UsageTracker:
    def __init__(self, store: KeyStore, flush_interval: float) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: dict[str, float] = {}  # key id → last use, epoch seconds
        self._counts: dict[tuple[str, int], list[int]] = {}  # (key id, day) → [requests, 429s]

    def record(self, key_id: str, now: float) -> None:
        """A request authenticated by the key at ``now`` (epoch seconds)."""
        self._pending[key_id] = now
        slot = (key_id, int(now // _DAY))
        counts = self._counts.get(slot)
        if counts is None:
            self._counts[slot] = [1, 0]
        else:
            counts[0] += 1

    def rate_limited(self, key_id: str, now: float) -> None:
        """A request already recorded was refused with 429."""
        self._counts.setdefault((key_id, int(now // _DAY)), [0, 0])[1] += 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        counts, self._counts = self._counts, {}
        stamps = {k: to_iso(datetime.fromtimestamp(t, UTC)) for k, t in pending.items()}
        daily = [
            UsageCounts(key_id, utc_day(day * _DAY), requests, limited)
            for (key_id, day), (requests, limited) in counts.items()
        ]
        try:
            await self._store.touch(stamps, daily)
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
            log.warning("usage flush failed: Redis unavailable; will retry")

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            if self._pending or self._counts:
                await asyncio.shield(self.flush())
