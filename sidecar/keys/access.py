"""The key store's access to Redis: every command it sends goes through ``_guarded``
(Redis errors become StoreUnavailable, counted), and every write of key data through
``_write`` (a Lua script of schema.py with its audit events, replicated as configured).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sidecar.core.errors import StoreUnavailable
from sidecar.keys import format as keyformat
from sidecar.keys.audit_schema import EVENT_ONLY
from sidecar.keys.audit_trail import Audited, AuditTrail, Call
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import CREATE, CREATE_CANARY, REVOKE, ROTATE, UPDATE
from sidecar.redisconn.client import (
    REDIS_ERRORS,
    UNREPLICATED,
    Durability,
    error_code,
    unexpected,
)

log = logging.getLogger("sidecar.store")


class KeyRedis:
    """The Redis client, the scripts registered on it, and how the store talks to it."""

    def __init__(
        self,
        redis: Redis,
        hasher: KeyHasher,
        max_active_per_user: int,
        *,
        retry_after: int,
        durability: Durability = UNREPLICATED,
        on_readonly: Callable[[], None] = lambda: None,
        generate: Callable[[str], str] = lambda environment: keyformat.generate(
            environment=environment
        ),
        audit: AuditTrail | None = None,
    ) -> None:
        self._redis = redis
        self._generate = generate
        self._hasher = hasher
        self.max_active_per_user = max_active_per_user
        self._retry_after = retry_after
        self._durability = durability
        self._on_readonly = on_readonly  # the server we write to was demoted
        # The app and the CLI pass the configured trail; a random key seals only a
        # trail no one will verify (tests that build a store of their own).
        self.audit = audit or AuditTrail(secrets.token_bytes(32), 400, retry_after)
        self.unconfirmed: dict[str, Audited] = {}  # revocations a failover may have lost
        self.republished = 0
        self._create = redis.register_script(CREATE)
        self._revoke = redis.register_script(REVOKE)
        self._create_canary = redis.register_script(CREATE_CANARY)
        self._rotate = redis.register_script(ROTATE)
        self._update = redis.register_script(UPDATE)
        self._event_only = redis.register_script(EVENT_ONLY)
        self.errors = 0  # Redis failures seen, for metrics

    async def _guarded(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            self.errors += 1
            code = error_code(exc)
            if code == "READONLY":
                self._on_readonly()
            elif unexpected(exc):  # still a 503 for the client; a bug for the operator
                log.error("unexpected Redis error reply %s: %s", code, exc)
            raise StoreUnavailable(self._retry_after) from exc

    async def _write(self, script: AsyncScript, calls: Sequence[Audited]) -> list[Any]:
        """Run a write script once per call with the events it records (audit_trail.py);
        the scripts' results. Every write of key data goes through here."""
        run = self.audit.run
        return await run(lambda sealed: self._execute(script, sealed), calls, script.sha)

    async def _execute(self, script: AsyncScript, calls: Sequence[Call]) -> list[Any]:
        """Run a write script once per (keys, args), in one round trip; done only once
        replicated as configured, else StoreUnavailable (the client must retry)."""

        async def queue(pipe: Any) -> None:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

        route = calls[0][0][0]  # all key data shares one slot

        async def run() -> list[Any]:
            write = self._durability.write
            try:
                return await write(self._redis, route, queue)
            except redis_errors.NoScriptError:  # a new or restarted Redis; nothing ran
                await self._redis.script_load(script.script)
                return await write(self._redis, route, queue)

        replies: list[Any] = await self._guarded(run())
        return replies
