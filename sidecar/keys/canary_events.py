"""``canary.used`` audit events, off the hot path: a request that used a canary key only
appends to a bounded list in memory (its 401 is the one an unknown key gets, no later
and no different); a background task writes the events every second, each with its own
single-event script (store.record_events)."""

from __future__ import annotations

import logging
from typing import Any

from sidecar.core.domain import CANARY_USED, CLIENT, AuditContext, VerifiedKey
from sidecar.core.errors import StoreUnavailable
from sidecar.core.periodic import flush_every
from sidecar.core.timeutil import now_iso
from sidecar.keys.audit_events import new_event
from sidecar.keys.store import KeyStore
from sidecar.observability.logs import AUDIT_LOGGER

log = logging.getLogger(AUDIT_LOGGER)

MAX_PENDING = 1000  # a flood of canary hits costs bounded memory; the rest are counted


class CanaryEvents:
    def __init__(self, store: KeyStore, flush_interval: float = 1.0) -> None:
        self._store = store
        self._interval = flush_interval
        self._pending: list[dict[str, Any]] = []
        self.dropped = 0  # events not recorded because too many were waiting

    def used(
        self, key: VerifiedKey, client_ip: str | None, user_agent: str | None, request_id: str
    ) -> None:
        """A request used the canary ``key``: its event, to be written soon."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        context = AuditContext(CLIENT, None, client_ip, user_agent, request_id)
        self._pending.append(
            new_event(
                CANARY_USED,
                context,
                time=now_iso(),
                user_id=key.user_id,
                key_id=key.id,
                key_prefix=key.prefix,
            )
        )

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            await self._store.record_events(pending)
        except StoreUnavailable:
            # Kept for the next round (those a failed batch did write are written again).
            self._pending = (pending + self._pending)[:MAX_PENDING]
            log.warning("canary.used events not written: Redis unavailable; will retry")

    async def run(self) -> None:
        await flush_every(self._interval, self.flush, lambda: bool(self._pending))
