"""The key store's reads: listings and their JSON view, verification (one HGET of the
prefix index per key), usage counts and networks, and the scoped keys counted at start.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from sidecar.core.domain import (
    ENVIRONMENTS,
    AllowedNetworks,
    DailyUsage,
    NetworkUsage,
    VerifiedKey,
    network_of,
)
from sidecar.core.errors import KeyNotFound
from sidecar.keys import format as keyformat
from sidecar.keys.access import KeyRedis
from sidecar.keys.schema import (
    all_keys_key,
    canary_keys_key,
    grace_set_key,
    legacy_active_set_key,
    limit_set_key,
    micros,
    prefix_index_key,
    record_key,
    scoped_keys_key,
)
from sidecar.keys.usage_calls import (
    NetworkCounts,
    UsageCounts,
    parse_usage,
    queue_touch,
    queue_usage,
)
from sidecar.keys.view import as_text, decode, listed, public_view

# Scoped keys read by the check at start for scopes the config no longer has.
SCOPED_READ_LIMIT = 100_000


class KeyReads(KeyRedis):
    async def list_keys(self, user_id: str, include_expired: bool) -> list[dict[str, Any]]:
        if include_expired:
            return await self._listed(all_keys_key(user_id), include_expired)
        return await self._listed_active(user_id)

    async def _listed_active(self, user_id: str) -> list[dict[str, Any]]:
        """The active keys, newest first, read from the sets that hold the keys that can
        be active (the limit sets, the grace set, the layout before environments): a
        user's revoked and expired keys, however many, cost nothing here. Listing them
        all is ``include_expired``'s job."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for environment in ENVIRONMENTS:
                pipe.zrange(limit_set_key(user_id, environment), 0, -1)
            pipe.zrangebyscore(grace_set_key(user_id), micros(datetime.now(UTC)), "+inf")
            pipe.smembers(legacy_active_set_key(user_id))
            found = await self._guarded(pipe.execute())
        ids = list(dict.fromkeys(as_text(i) for group in found for i in group))
        views = await self._views(ids, created_in=all_keys_key(user_id))
        return [view for view in views if view["is_active"]]

    async def list_canaries(self, user_id: str, include_expired: bool) -> list[dict[str, Any]]:
        return await self._listed(canary_keys_key(user_id), include_expired)

    async def _listed(self, index: str, include_expired: bool) -> list[dict[str, Any]]:
        ids = await self._guarded(self._redis.zrevrange(index, 0, -1))
        views = await self._views([as_text(i) for i in ids])
        return [view for view in views if include_expired or view["is_active"]]

    async def _views(
        self, ids: Sequence[str], created_in: str | None = None
    ) -> list[dict[str, Any]]:
        """The public view of these keys' records (missing ones left out): in this order,
        or newest first by their score (created µs) in the index ``created_in``."""
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(record_key(key_id))
                if created_in is not None:
                    pipe.zscore(created_in, key_id)
            replies = await self._guarded(pipe.execute())
        now = time.time()
        if created_in is None:
            return [public_view(decode(r), now) for r in replies if r]
        scored = [
            (created or 0.0, public_view(decode(record), now))
            for record, created in zip(replies[::2], replies[1::2], strict=True)
            if record
        ]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [view for _, view in scored]

    async def _owned(self, key_id: str, user_id: str | None, *fields: str) -> Sequence[str | None]:
        """``user_id`` and ``fields`` of the record, when it exists and belongs to
        ``user_id`` (None: to anyone); else KeyNotFound."""
        found = await self._guarded(self._redis.hmget(record_key(key_id), "user_id", *fields))
        values = [None if v is None else as_text(v) for v in found]
        if values[0] is None or (user_id is not None and values[0] != user_id):
            raise KeyNotFound()
        return values

    async def check_owner(self, key_id: str, user_id: str | None) -> None:
        """KeyNotFound unless the key exists and is ``user_id``'s (None: anyone's)."""
        await self._owned(key_id, user_id)

    async def verify(self, parsed: keyformat.ParsedKey, key_hash: str) -> VerifiedKey | None:
        """Look the key up by prefix; None when no key with this hash exists."""
        raw = await self._guarded(self._redis.hget(prefix_index_key(parsed.prefix), key_hash))
        return self._verified(raw, parsed.prefix, key_hash)

    async def verify_many(
        self, lookups: Sequence[tuple[keyformat.ParsedKey, str]]
    ) -> Sequence[VerifiedKey | None]:
        """``verify`` for many (key, hash) pairs in one pipelined round trip."""
        if not lookups:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for parsed, key_hash in lookups:
                pipe.hget(prefix_index_key(parsed.prefix), key_hash)
            found = await self._guarded(pipe.execute())
        return [
            self._verified(raw, parsed.prefix, key_hash)
            for raw, (parsed, key_hash) in zip(found, lookups, strict=True)
        ]

    def _verified(self, raw: bytes | None, prefix: str, key_hash: str) -> VerifiedKey | None:
        if raw is None:
            return None
        entry = orjson.loads(raw)
        scopes = entry.get("scopes")
        allowed = entry.get("allowed_ips")
        return VerifiedKey(
            id=entry["id"],
            user_id=entry["user_id"],
            prefix=prefix,
            active=bool(entry["active"]),
            expires_at=entry.get("expires_at"),
            environment=keyformat.environment_of(prefix),
            canary=bool(entry.get("canary", False)),
            scopes=None if scopes is None else tuple(scopes),
            networks=None if allowed is None else AllowedNetworks(map(network_of, allowed)),
        )

    async def scope_references(self, limit: int = SCOPED_READ_LIMIT) -> tuple[dict[str, int], int]:
        """How many usable keys have each scope (read from the scoped-key set, at most
        ``limit`` keys), and how many keys were read. Keys no longer usable (revoked,
        expired, gone) leave the set, so it holds about the usable scoped keys."""
        name = scoped_keys_key()
        counts: dict[str, int] = {}
        seen: set[str] = set()  # SSCAN may return a member twice
        cursor = 0
        now_us = micros(datetime.now(UTC))
        while len(seen) < limit:
            next_cursor, ids = await self._guarded(self._redis.sscan(name, cursor, count=500))
            cursor = int(next_cursor)
            batch = [i for i in dict.fromkeys(as_text(i) for i in ids) if i not in seen]
            batch = batch[: limit - len(seen)]
            seen.update(batch)
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in batch:
                    pipe.hmget(record_key(key_id), "scopes", "is_active", "expires_us")
                found = await self._guarded(pipe.execute())
            gone = []
            for key_id, values in zip(batch, found, strict=True):
                scopes, active, expires_us = (None if v is None else as_text(v) for v in values)
                usable = active == "1" and (expires_us is None or int(expires_us) > now_us)
                if scopes is None or not usable:
                    gone.append(key_id)
                    continue
                for scope in listed(scopes):
                    counts[scope] = counts.get(scope, 0) + 1
            if gone:
                await self._guarded(self._redis.srem(name, *gone))
            if not cursor:
                break
        return counts, len(seen)

    async def touch(
        self,
        last_used: Mapping[str, str],
        counts: Sequence[UsageCounts] = (),
        networks: Sequence[NetworkCounts] = (),
    ) -> None:
        """Record last-use times (key id → ISO time) and add per-day use counts and
        the networks keys were used from, all in one pipelined round trip."""
        if not last_used and not counts and not networks:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_touch(pipe, last_used, counts, networks)
            await self._guarded(pipe.execute())

    async def usage(
        self, key_id: str, user_id: str | None, days: Sequence[str]
    ) -> tuple[str, list[DailyUsage], list[NetworkUsage]]:
        """The key's prefix, its counts on ``days`` (YYYY-MM-DD, UTC) and the networks
        it was used from then, in one round trip; KeyNotFound for an unknown or another
        user's key (``user_id`` None: any owner's)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_usage(pipe, key_id, days)
            replies = await self._guarded(pipe.execute())
        owner, prefix, daily, networks = parse_usage(replies, days)
        if owner is None or prefix is None or (user_id is not None and owner != user_id):
            raise KeyNotFound()
        return prefix, daily, networks
