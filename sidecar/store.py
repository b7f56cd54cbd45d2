"""The API-key store: the only module that reads or writes key data in Redis.

Redis data model (every key carries the hash tag ``{callcov-keys}``, so on Redis
Cluster all key data lives in one slot and the Lua scripts below stay atomic; key
data is small and rarely written, so one shard is plenty):

=========================================  ======  =============================================
key                                         type    holds
=========================================  ======  =============================================
``callcov:{callcov-keys}:rec:<id>``         HASH    the audit record: id, user_id, key_prefix, hash,
                                                    description (absent = null), is_active (1/0),
                                                    created_at, updated_at, last_used_at, expires_at
``callcov:{callcov-keys}:user:<uid>:active`` SET    ids of the user's active keys (SCARD = limit)
``callcov:{callcov-keys}:user:<uid>:all``   ZSET    every id the user ever had, score = created µs
``callcov:{callcov-keys}:user:<uid>:canary`` ZSET   the user's canary keys, score = created µs
``callcov:{callcov-keys}:prefix:<prefix>``  HASH    field = HMAC of the full key, value = JSON
                                                    {id, user_id, hash, active, expires_at,
                                                    canary (only when true)}: what
                                                    verification needs, in one HGET
``callcov:revocations`` (pub/sub channel)  —       the HMAC of each revoked key, for cache eviction
=========================================  ======  =============================================

A prefix maps to a hash of entries, so any number of keys may share a prefix.
The full key is never stored, only its keyed hash.

A canary key (record field ``canary: 1``) is in the prefix index like any key, so it
verifies like one, but in neither of the user's ``active`` nor ``all`` sets: it never
counts against the limit and is never listed, except by ``list_canaries``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from sidecar import keyformat
from sidecar.domain import CreatedKey, VerifiedKey, key_prefix
from sidecar.errors import KeyLimitReached, KeyNotFound, StoreUnavailable
from sidecar.keyhash import KeyHasher
from sidecar.timeutil import now_iso, parse_iso, to_iso

NAMESPACE = "callcov:{callcov-keys}"
REVOCATION_CHANNEL = "callcov:revocations"

_CREATE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], unpack(ARGV, 5, #ARGV - 1))
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[#ARGV])
return 1
"""
# ARGV: owner ('' = any), now, channel, revoked index entry (JSON)
_REVOKE = """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'hash', 'id')
if not rec[1] then return 0 end
if ARGV[1] ~= '' and rec[1] ~= ARGV[1] then return 0 end
if rec[2] == '1' then
  redis.call('HSET', KEYS[1], 'is_active', '0', 'updated_at', ARGV[2], 'expires_at', ARGV[2])
  redis.call('SREM', KEYS[2], rec[4])
  redis.call('HSET', KEYS[3], rec[3], ARGV[4])
  redis.call('PUBLISH', ARGV[3], rec[3])
end
return 1
"""

REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    OSError,
)


def record_key(key_id: str) -> str:
    return f"{NAMESPACE}:rec:{key_id}"


def active_set_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:active"


def all_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:all"


def canary_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:canary"


def prefix_index_key(prefix: str) -> str:
    return f"{NAMESPACE}:prefix:{prefix}"


class KeyStore:
    def __init__(
        self,
        redis: Redis,
        hasher: KeyHasher,
        max_active_per_user: int,
        generate: Callable[[], str] = keyformat.generate,
    ) -> None:
        self._redis = redis
        self._generate = generate
        self._hasher = hasher
        self.max_active_per_user = max_active_per_user
        self._create = redis.register_script(_CREATE)
        self._revoke = redis.register_script(_REVOKE)
        self.errors = 0  # Redis failures seen, for metrics

    async def _guarded(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except REDIS_ERRORS as exc:
            self.errors += 1
            raise StoreUnavailable() from exc

    async def create(self, user_id: str, description: str | None) -> CreatedKey:
        api_key = self._generate()
        prefix = key_prefix(api_key)
        key_hash = self._hasher.hash(api_key)
        key_id = str(uuid.uuid4())
        moment = datetime.now(UTC)
        created_at = to_iso(moment)
        fields: dict[str, str] = {
            "id": key_id,
            "user_id": user_id,
            "key_prefix": prefix,
            "hash": key_hash,
            "is_active": "1",
            "created_at": created_at,
            "updated_at": created_at,
        }
        if description is not None:
            fields["description"] = description
        flat = [item for pair in fields.items() for item in pair]
        entry = _index_entry(key_id, user_id, key_hash, active=True)
        score = int(moment.timestamp() * 1_000_000)
        keys = [active_set_key(user_id), all_keys_key(user_id), record_key(key_id)]
        keys.append(prefix_index_key(prefix))
        args: list[str | int | bytes] = [self.max_active_per_user, key_id, score, key_hash]
        args += [*flat, entry]
        created = await self._guarded(self._create(keys=keys, args=args))
        if not created:
            raise KeyLimitReached(self.max_active_per_user)
        return CreatedKey(key_id, api_key, prefix, description, created_at)

    async def list(self, user_id: str, include_expired: bool) -> list[dict[str, Any]]:
        ids = await self._guarded(self._redis.zrevrange(all_keys_key(user_id), 0, -1))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(record_key(_text(key_id)))
            records = await self._guarded(pipe.execute())
        now = time.time()
        listed = [_public_view(_decode(r), now) for r in records if r]
        return [r for r in listed if include_expired or r["is_active"]]

    async def revoke(self, key_id: str, user_id: str | None) -> str:
        """Expire a key for good; return its hash (for local cache eviction).
        ``user_id`` None = operator action (any owner)."""
        owner = user_id
        if owner is None:
            found = await self._guarded(self._redis.hget(record_key(key_id), "user_id"))
            if found is None:
                raise KeyNotFound()
            owner = _text(found)
        record = await self._guarded(self._redis.hmget(record_key(key_id), "key_prefix", "hash"))
        prefix, key_hash = (_text(v) if v is not None else None for v in record)
        if prefix is None or key_hash is None:
            raise KeyNotFound()
        now = now_iso()
        revoked_entry = _index_entry(key_id, owner, key_hash, active=False)
        keys = [record_key(key_id), active_set_key(owner), prefix_index_key(prefix)]
        args: list[str | bytes] = [owner, now, REVOCATION_CHANNEL, revoked_entry]
        if not await self._guarded(self._revoke(keys=keys, args=args)):
            raise KeyNotFound()
        return key_hash

    async def verify(self, parsed: keyformat.ParsedKey, key_hash: str) -> VerifiedKey | None:
        """Look the key up by prefix; None when no key with this hash exists."""
        raw = await self._guarded(self._redis.hget(prefix_index_key(parsed.prefix), key_hash))
        if raw is None:
            return None
        entry = orjson.loads(raw)
        if not self._hasher.matches(entry["hash"], key_hash):
            return None
        return VerifiedKey(
            id=entry["id"],
            user_id=entry["user_id"],
            prefix=parsed.prefix,
            active=bool(entry["active"]),
            expires_at=entry.get("expires_at"),
        )

    async def touch(self, last_used: Mapping[str, str]) -> None:
        """Record last-use times (key id → ISO time) in one pipelined round trip."""
        if not last_used:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id, moment in last_used.items():
                pipe.hset(record_key(key_id), "last_used_at", moment)
            await self._guarded(pipe.execute())


def _index_entry(key_id: str, user_id: str, key_hash: str, *, active: bool) -> bytes:
    entry = {"id": key_id, "user_id": user_id, "hash": key_hash, "active": active}
    return orjson.dumps(entry)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(record: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in record.items()}


def _public_view(record: dict[str, str], now: float) -> dict[str, Any]:
    expires_at = record.get("expires_at")
    active = record.get("is_active") == "1" and (
        expires_at is None or parse_iso(expires_at).timestamp() > now
    )
    return {
        "id": record["id"],
        "key_prefix": record["key_prefix"],
        "description": record.get("description"),
        "is_active": active,
        "last_used_at": record.get("last_used_at"),
        "expires_at": expires_at,
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
    }
