"""Writing the audit trail: a write script's call gets the audit tail (the chain's
keys, the events sealed on the head it expects) and is run again, sealed on the head
Redis names, when another writer moved the head first (audit_schema.py).

One instance seals one batch at a time (a lock), so its own writes never conflict;
only writers in other processes do, and each retry costs one round trip. Writes that
arrive while a batch is in flight wait and then go together, sealed one after the
other, in one pipelined round trip (a group commit): concurrent changes cost a round
trip per batch, not one each in turn. Each event written is also logged as a JSON line
with ``"log": "audit"``: an independent copy for a log pipeline, which also holds what
a truncation of the stream would remove.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.errors import StoreUnavailable
from sidecar.keys.audit_events import sealed, stored
from sidecar.keys.audit_schema import (
    AUDIT_ANCHOR,
    AUDIT_HEAD,
    AUDIT_STREAM,
    CONFLICT,
    key_events_key,
    padded,
)
from sidecar.observability.logs import AUDIT_LOGGER

log = logging.getLogger(AUDIT_LOGGER)

Call = tuple[Sequence[str], Sequence[Any]]
_ATTEMPTS = 50  # concurrent writers in other processes; each retry is one round trip
_BATCH = 64  # calls of one script sent together at most
_TRIM_EVERY_MS = 10_000  # how often a writer asks its script to apply the retention
Execute = Callable[[list[Call]], Awaitable[list[Any]]]
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Audited:
    """A write script's KEYS and ARGV, and the events (not yet sealed) it writes if it
    makes its change."""

    keys: Sequence[str]
    args: Sequence[Any]
    events: Sequence[dict[str, Any]] = field(default_factory=tuple)


@dataclass(slots=True)
class _Submission:
    group: str  # calls of one script batch together
    execute: Execute
    calls: Sequence[Audited]
    done: asyncio.Future[list[Any]]


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
        self._queue: list[_Submission] = []
        self._next_trim_ms = 0
        self.conflicts = 0  # retries because another writer moved the head, for metrics

    def __repr__(self) -> str:
        return "AuditTrail(key=***)"

    def _seal(self, audited: Audited, prev: str, now_ms: int, trim: bool) -> _Sealed:
        events = []
        head = prev
        for event in audited.events:
            events.append(sealed(event, head, self._key))
            head = events[-1]["hash"]
        minid = max(0, now_ms - self.retention_ms)
        tail = [
            *(stored(e) for e in events),
            *(e["hash"] for e in events),
            prev,
            len(events),
            str(max(0, minid - 1)) if trim else "",
            padded(str(minid)),
            self.retention_ms,
        ]
        keys = [
            *audited.keys,
            AUDIT_HEAD,
            AUDIT_STREAM,
            AUDIT_ANCHOR,
            *(key_events_key(e["key_id"]) for e in events),
        ]
        return _Sealed((keys, [*audited.args, *tail]), events, head)

    async def run(self, execute: Execute, calls: Sequence[Audited], group: str = "") -> list[Any]:
        """The scripts' results of ``calls``, run through ``execute`` (one pipelined
        round trip per attempt) with any other calls of the same ``group`` waiting,
        each sealed on the head the one before it leaves."""
        mine = _Submission(group, execute, calls, asyncio.get_running_loop().create_future())
        self._queue.append(mine)
        while not mine.done.done():
            async with self._lock:
                if not mine.done.done():
                    await self._commit(self._take())
        return mine.done.result()

    def _take(self) -> list[_Submission]:
        """The oldest waiting submission and the others of its group, in order."""
        group = self._queue[0].group
        taken: list[_Submission] = []
        size = 0
        for submission in self._queue:
            if submission.group == group and (not taken or size + len(submission.calls) <= _BATCH):
                taken.append(submission)
                size += len(submission.calls)
        self._queue = [s for s in self._queue if all(s is not t for t in taken)]
        return taken

    async def _commit(self, batch: list[_Submission]) -> None:
        calls = [call for submission in batch for call in submission.calls]
        try:
            results = await self._written(batch[0].execute, calls)
        except BaseException as exc:
            # Cancelled (the one running the batch went away): the others' fate is
            # unknown, as after any failed write; they answer 503.
            failure = exc if isinstance(exc, Exception) else StoreUnavailable(self._retry_after)
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for submission in batch:
            end = start + len(submission.calls)
            submission.done.set_result(results[start:end])
            start = end

    async def _written(self, execute: Execute, calls: Sequence[Audited]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        if pending:  # an empty batch sends nothing
            for _ in range(_ATTEMPTS):
                now_ms = int(time.time() * 1000)
                batch: list[_Sealed] = []
                prev = self._head
                # Retention runs once a while (and on the first write), not every write.
                trim = now_ms >= self._next_trim_ms
                for index in pending:
                    batch.append(self._seal(calls[index], prev, now_ms, trim))
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
                    if trim:
                        self._next_trim_ms = now_ms + _TRIM_EVERY_MS
                    for event, entry_id in zip(built.events, ids, strict=False):
                        _log({"id": _text(entry_id), **event})
                if not retry:
                    return results
                self.conflicts += 1
                pending = retry
        else:
            return results
        log.error("audit chain head kept moving: %d attempts failed", _ATTEMPTS)
        raise StoreUnavailable(self._retry_after)


def _log(event: dict[str, Any]) -> None:
    log.info("audit", extra={"fields": {"log": "audit", **event}})
