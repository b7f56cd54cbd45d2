"""Reading the audit trail: one key's events (the keys API), the whole chain in order
(the admin feed, ``audit export``) and the check of the chain (``audit verify``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from sidecar.core.errors import StoreUnavailable
from sidecar.core.timeutil import parse_iso
from sidecar.keys.audit_events import ChainCheck, Problem, from_entry, seal_hash
from sidecar.keys.audit_schema import (
    AUDIT_ANCHOR,
    AUDIT_HEAD,
    AUDIT_STREAM,
    KEY_EVENTS_PREFIX,
    key_events_key,
    padded,
    unpadded,
)
from sidecar.redisconn.client import REDIS_ERRORS

_CHUNK = 1000  # entries per XRANGE while walking the chain
_CLOCK_SLACK_MS = 3_600_000  # clocks of the writers and of the verifier may differ


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _events(entries: Any) -> list[dict[str, Any]]:
    return [_event(_text(entry_id), fields) for entry_id, fields in entries]


def _event(entry_id: str, fields: Any) -> dict[str, Any]:
    """The entry's event; an entry someone wrote by hand that is none is still shown
    (``audit verify`` names it), not skipped and not an error for the reader."""
    try:
        return from_entry(entry_id, fields[b"event"])
    except (KeyError, ValueError):
        return {"id": entry_id, "invalid": "not an audit event"}


@dataclass(frozen=True, slots=True)
class Verdict:
    events: int
    problem: str | None
    first: str | None = None
    last: str | None = None


class AuditReader:
    """Every read answers StoreUnavailable when Redis does not."""

    def __init__(
        self,
        redis: Redis,
        key: bytes = b"",
        retention_days: float = 400,
        retry_after: int = 5,
    ) -> None:
        self._redis = redis
        self._retry_after = retry_after
        self._key = key  # only ``verify`` needs it
        self._retention_ms = int(retention_days * 86_400_000)

    def __repr__(self) -> str:
        return "AuditReader(key=***)"

    async def key_events(self, key_id: str, limit: int, before: str | None) -> list[dict[str, Any]]:
        """The key's events, newest first, older than the event ``before``."""
        end = "+" if before is None else f"({padded(before)}"
        index = key_events_key(key_id)
        ids = await self._guarded(self._redis.zrevrangebylex(index, end, "-", 0, limit))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in ids:
                entry_id = unpadded(_text(member))
                pipe.xrange(AUDIT_STREAM, entry_id, entry_id)
            found = await self._guarded(pipe.execute())
        return [event for entries in found for event in _events(entries)]

    async def feed(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Every event, oldest first, newer than the event ``after``. Entry ids grow
        with each write and a write is one script, so a page never misses an event
        written while the pages before it were read."""
        start = "-" if after is None else f"({after}"
        read = self._redis.xrange(AUDIT_STREAM, start, "+", count=limit)
        return _events(await self._guarded(read))

    async def _guarded(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(self._retry_after) from exc

    async def export(
        self, since_ms: int | None = None, user: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events oldest first, from ``since_ms`` (epoch ms) on, of ``user``'s keys."""
        start = "-" if since_ms is None else str(since_ms)
        while True:
            found = await self._range(start)
            for event in _events(found):
                if user is None or event.get("user_id") == user:
                    yield event
            if len(found) < _CHUNK:
                return
            start = f"({_text(found[-1][0])}"

    async def _range(self, start: str) -> list[Any]:
        return list(await self._redis.xrange(AUDIT_STREAM, start, "+", count=_CHUNK) or [])

    async def verify(self) -> Verdict:
        """Walk the chain from where retention left it (the anchor) to its head."""
        start, problem = await self._anchor()
        if problem is not None:
            return Verdict(0, problem)
        check = ChainCheck(self._key, start)
        cursor = "-"
        first = None
        while check.problem is None:
            found = await self._range(cursor)
            for entry_id, fields in found:
                first = first or _text(entry_id)
                raw = fields.get(b"event", b"")
                if check.feed(_text(entry_id), raw) is not None:
                    break
            if len(found) < _CHUNK:
                break
            cursor = f"({_text(found[-1][0])}"
        if check.problem is not None:
            return Verdict(check.count, await self._explained(check.problem, check.last_id))
        head = _text(await self._redis.get(AUDIT_HEAD) or b"")
        if head != check.last_hash:
            where = f"after event {check.last_id}" if check.last_id else "in an empty chain"
            return Verdict(
                check.count,
                f"the chain ends {where}, but its head is {head!r}: the newest events "
                "were removed (or the head was changed)",
            )
        return Verdict(check.count, None, first, check.last_id)

    async def _anchor(self) -> tuple[str, str | None]:
        """The hash the chain starts from: the newest event retention trimmed, which
        must be sealed and older than the retention period; '' when none was."""
        raw = await self._redis.get(AUDIT_ANCHOR)
        if raw is None:
            return "", None
        try:
            anchor = orjson.loads(raw)
            sealed = anchor["hash"] == seal_hash(anchor, self._key)
            moment = parse_iso(anchor["time"]).timestamp() * 1000
        except (ValueError, KeyError, TypeError):
            return "", "the chain's anchor (the newest trimmed event) is not an event"
        if not sealed:
            return "", "the chain's anchor (the newest trimmed event) was edited"
        if moment > time.time() * 1000 - self._retention_ms + _CLOCK_SLACK_MS:
            return "", (
                "the chain's anchor is younger than audit.retention_days: events were "
                "removed from the start of the chain"
            )
        return str(anchor["hash"]), None

    async def _explained(self, problem: Problem, before: str | None) -> str:
        """The problem, naming the removed event when a key's index still lists it."""
        if "removed" not in problem.message:
            return str(problem)
        start = "-" if before is None else f"({padded(before)}"
        end = f"({padded(problem.event_id)}"
        async for name in self._redis.scan_iter(match=KEY_EVENTS_PREFIX + "*", count=1000):
            listed = await self._redis.zrangebylex(name, start, end)
            if listed:
                removed = unpadded(_text(listed[0]))
                return (
                    f"event {removed} was removed from the chain (its key's history "
                    f"still lists it); the first event after the gap is {problem.event_id}"
                )
        return str(problem)
