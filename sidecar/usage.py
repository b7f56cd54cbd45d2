"""``last_used_at`` bookkeeping off the hot path: uses are coalesced per key in
memory and written to Redis in one pipelined round trip every flush interval."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sidecar.errors import StoreUnavailable
from sidecar.store import KeyStore
from sidecar.timeutil import to_iso

log = logging.getLogger("sidecar.usage")


class UsageTracker:
    def __init__(self, store: KeyStore, flush_interval: float) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: dict[str, float] = {}

    def record(self, key_id: str) -> None:
        self._pending[key_id] = time.time()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        stamps = {k: to_iso(datetime.fromtimestamp(t, UTC)) for k, t in pending.items()}
        try:
            await self._store.touch(stamps)
        except StoreUnavailable:
            for key_id, moment in pending.items():  # keep them for the next round
                self._pending.setdefault(key_id, moment)
            log.warning("last_used_at flush failed: Redis unavailable; will retry")

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            if self._pending:
                await asyncio.shield(self.flush())
