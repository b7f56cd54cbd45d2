"""Writing the audit trail: a write script's call gets the audit tail (the chain's
keys, the events sealed on the head it expects) and is run again, sealed on the head
Redis names, when another writer moved the head first (audit_schema.py).

One instance seals one batch at a time (a lock), so its own writes never conflict;
only writers in other processes do, and each retry costs one round trip. Each event
written is also logged as a JSON line with ``"log": "audit"``: an independent copy
for a log pipeline, which also holds what a truncation of the stream would remove.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.core.errors import StoreUnavailable
from sidecar.keys.audit_events import from_entry, sealed, stored
from sidecar.keys.audit_schema import (
    AUDIT_ANCHOR,
    AUDIT_HEAD,
    AUDIT_STREAM,
    CONFLICT,
    key_events_key,
    padded,
)

log = logging.getLogger("sidecar.audit")

Call = tuple[Sequence[str], Sequence[Any]]
_ATTEMPTS = 50  # concurrent writers in other processes; each retry is one round trip
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Audited:
    """A write script's KEYS and ARGV, and the events (not yet sealed) it writes if it
    makes its change."""

    keys: Sequence[str]
    args: Sequence[Any]
    events: Sequence[dict[str, Any]] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _Sealed:
    call: Call
    events: list[dict[str, Any]]
    head: str  # the chain's head once they are written


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AuditTrail:
    def __init__(self, key: bytes, retention_days: int, retry_after: int = 5) -> None:
        self._key = key
        self.retention_ms = retention_days * _DAY_MS
        self._retry_after = retry_after
        self._head = ""  # what this instance last saw; a guess Redis corrects
        self._lock = asyncio.Lock()
        self.conflicts = 0  # retries because another writer moved the head, for metrics

    def __repr__(self) -> str:
        return "AuditTrail(key=***)"

    def _seal(self, audited: Audited, prev: str, now_ms: int) -> _Sealed:
        events = []
        head = prev
        for event in audited.events:
            events.append(sealed(event, head, self._key))
            head = events[-1]["hash"]
        minid = max(0, now_ms - self.retention_ms)
        tail = {
            "prev": prev,
            "trim_end": str(max(0, minid - 1)),
            "min_member": padded(str(minid)),
            "ttl_ms": str(self.retention_ms),
            "events": [{"json": stored(e).decode(), "hash": e["hash"]} for e in events],
        }
        keys = [
            *audited.keys,
            AUDIT_HEAD,
            AUDIT_STREAM,
            AUDIT_ANCHOR,
            *(key_events_key(e["key_id"]) for e in events),
        ]
        return _Sealed((keys, [*audited.args, orjson.dumps(tail)]), events, head)

    async def run(
        self, execute: Callable[[list[Call]], Awaitable[list[Any]]], calls: Sequence[Audited]
    ) -> list[Any]:
        """Run ``calls`` through ``execute`` (one pipelined round trip per attempt),
        each sealed on the head the one before it leaves; the scripts' results."""
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        async with self._lock:
            for _ in range(_ATTEMPTS):
                now_ms = int(time.time() * 1000)
                batch: list[_Sealed] = []
                prev = self._head
                for index in pending:
                    batch.append(self._seal(calls[index], prev, now_ms))
                    prev = batch[-1].head
                replies = await execute([s.call for s in batch])
                retry = []
                for index, built, reply in zip(pending, batch, replies, strict=True):
                    status, head, *ids = reply
                    self._head = _text(head)
                    if status == CONFLICT:
                        retry.append(index)
                        continue
                    results[index] = status
                    for event, entry_id in zip(built.events, ids, strict=False):
                        _log(from_entry(_text(entry_id), stored(event)))
                if not retry:
                    return results
                self.conflicts += 1
                pending = retry
        log.error("audit chain head kept moving: %d attempts failed", _ATTEMPTS)
        raise StoreUnavailable(self._retry_after)


def _log(event: dict[str, Any]) -> None:
    log.info("audit", extra={"fields": {"log": "audit", **event}})
