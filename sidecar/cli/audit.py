"""``callcov-sidecar audit verify`` and ``audit export``: the audit trail for operators
(SPEC Part 3; docs/security/audit.md)."""

from __future__ import annotations

import sys
from datetime import datetime

import orjson
from redis.asyncio import Redis

from sidecar.config.model import Config
from sidecar.keys.audit_events import configured_key
from sidecar.keys.audit_reader import AuditReader

EXIT_OK, EXIT_BROKEN = 0, 1


async def verify(redis: Redis, config: Config) -> int:
    """Exit 0 when the chain is intact (or empty), 1 naming the first bad event."""
    reader = AuditReader(redis, configured_key(config), config.audit.retention_days)
    verdict = await reader.verify()
    if verdict.problem is not None:
        print(f"audit chain broken: {verdict.problem}")
        print(f"error: audit chain broken: {verdict.problem}", file=sys.stderr)
        return EXIT_BROKEN
    if verdict.events == 0:
        print("audit chain intact: no events recorded yet, nothing to verify")
    else:
        print(
            f"audit chain intact: {verdict.events} event(s), from {verdict.first} to {verdict.last}"
        )
    return EXIT_OK


async def export(redis: Redis, since: datetime | None, user: str | None) -> int:
    """Events as JSON lines, oldest first."""
    since_ms = None if since is None else int(since.timestamp() * 1000)
    out = sys.stdout.buffer
    async for event in AuditReader(redis).export(since_ms, user):
        out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
    out.flush()
    return EXIT_OK
