"""The API-key store: the only module that reads or writes key data in Redis.

Redis data model (every key carries the hash tag ``{callcov-keys}``, so on Redis
Cluster all key data lives in one slot and the Lua scripts below stay atomic; key
data is small and rarely written, so one shard is plenty):

===============================================  ======  ========================================
key                                               type    holds
===============================================  ======  ========================================
``callcov:{callcov-keys}:rec:<id>``               HASH    the audit record: id, user_id, key_prefix,
                                                          hash, description (absent = null),
                                                          is_active (1/0), environment (absent =
                                                          live), created_at, updated_at,
                                                          last_used_at, expires_at (ISO) and
                                                          expires_us (epoch µs), rotated_from,
                                                          rotated_to, revoked_reason, revoked_at
                                                          and any audit fields of the revocation
``callcov:{callcov-keys}:user:<uid>:active:<env>`` ZSET   the user's keys counting against the limit
                                                          of environment <env>, score = expiry in
                                                          epoch µs (``+inf``: none); ZCARD after
                                                          pruning expired scores = the count
``callcov:{callcov-keys}:user:<uid>:active``      SET     the layout before environments (live keys,
                                                          none expiring): moved into ``active:live``
                                                          by the user's next create
``callcov:{callcov-keys}:user:<uid>:all``         ZSET    every id the user ever had, score =
                                                          created µs
``callcov:{callcov-keys}:user:<uid>:canary``      ZSET    the user's canary keys, score = created µs
``callcov:{callcov-keys}:prefix:<prefix>``        HASH    field = HMAC of the full key, value = JSON
                                                          {id, user_id, active, expires_at (epoch
                                                          s), canary (only when true)}: what
                                                          verification needs, in one HGET
``callcov:{callcov-keys}:usage:<id>:<date>``      HASH    requests, rate_limited on that UTC day;
                                                          expires after the longest usage window
``callcov:revocations`` (pub/sub channel)        —       the HMAC of each key whose verification
                                                          answer changed, for cache eviction
===============================================  ======  ========================================

A prefix maps to a hash of entries, so any number of keys may share a prefix.
The full key is never stored, only its keyed hash. Records written before
environments and expiry existed (no ``environment``, ``expires_us``) read as live
keys that never expire.

A canary key (record field ``canary: 1``) is in the prefix index like any key, so it
verifies like one, but in neither of the user's ``active`` nor ``all`` sets: it never
counts against the limit and is never listed, except by ``list_canaries``.

Verification is that HGET, keyed by the HMAC of the presented key: there is no second
comparison of secrets after it (one would compare the HMAC with itself). The lookup's
timing can only depend on the HMAC, which nobody can steer without the hash secret.
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sidecar.core.domain import (
    ENVIRONMENTS,
    LIVE,
    REVOKED,
    CreatedKey,
    DailyUsage,
    VerifiedKey,
    key_prefix,
)
from sidecar.core.errors import (
    KeyAlreadyRotated,
    KeyLimitReached,
    KeyNotActive,
    KeyNotFound,
    StoreUnavailable,
)
from sidecar.core.timeutil import parse_iso, to_iso
from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.redisconn.client import (
    REDIS_ERRORS,
    UNREPLICATED,
    Durability,
    NotReplicated,
    error_code,
    unexpected,
)

log = logging.getLogger("sidecar.store")

_Call = tuple[Sequence[str], Sequence[Any]]  # a script's KEYS and ARGV
# A write that failed this way may still have been applied by the master it reached.
_MAYBE_APPLIED = (NotReplicated, redis_errors.ConnectionError, redis_errors.TimeoutError)

NAMESPACE = "callcov:{callcov-keys}"
REVOCATION_CHANNEL = "callcov:revocations"
# What a revocation or rotation left the key as, published right after the hash on
# REVOCATION_CHANNEL (which earlier versions follow): "<hash> 0" when revoked, "<hash>
# <µs>" when usable until then (a rotation's grace). The scripts derive the name.
STATE_CHANNEL = REVOCATION_CHANNEL + ":state"
NEVER = "+inf"  # the score of a key without expiry
USAGE_KEPT_DAYS = 91  # the longest usage window (90 days) and the day in progress
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Keys of the layout before environments move into the live limit set.
_ADOPT_LEGACY = """
local function adopt_legacy(legacy, live)
  local ids = redis.call('SMEMBERS', legacy)
  for _, id in ipairs(ids) do redis.call('ZADD', live, '+inf', id) end
  if #ids > 0 then redis.call('DEL', legacy) end
end
"""
# KEYS: limit set of the key's environment, all, record, prefix index, legacy set, live set.
# ARGV: max, id, created µs, hash, now µs, expiry score, record fields..., index entry.
_CREATE = (
    _ADOPT_LEGACY
    + """
adopt_legacy(KEYS[5], KEYS[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], unpack(ARGV, 7, #ARGV - 1))
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[#ARGV])
return 1
"""
)
# KEYS: record, limit set, prefix index, legacy set.
# ARGV: owner ('' = any), now ISO, now µs, channel, revoked index entry, reason,
# audit field pairs... Only a key still usable is recorded as revoked (with the reason
# and audit fields); an expired one is just marked inactive, its reason left null.
# KEYS: record, the user's canary set, prefix index. ARGV: id, created µs, hash, record
# fields..., index entry. No limit, no listing: a canary is only a trap (authn.py).
_CREATE_CANARY = """
redis.call('HSET', KEYS[1], unpack(ARGV, 4, #ARGV - 1))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[#ARGV])
return 1
"""
_REVOKE = """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'hash', 'id', 'expires_us')
if not rec[1] then return 0 end
if ARGV[1] ~= '' and rec[1] ~= ARGV[1] then return 0 end
if rec[2] == '1' then
  redis.call('HSET', KEYS[1], 'is_active', '0', 'updated_at', ARGV[2])
  if not rec[5] or tonumber(rec[5]) > tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'expires_at', ARGV[2], 'expires_us', ARGV[3],
      'revoked_reason', ARGV[6], 'revoked_at', ARGV[2], unpack(ARGV, 7))
  end
  redis.call('ZREM', KEYS[2], rec[4])
  redis.call('SREM', KEYS[4], rec[4])
  redis.call('HSET', KEYS[3], rec[3], ARGV[5])
  redis.call('PUBLISH', ARGV[4], rec[3])
  redis.call('PUBLISH', ARGV[4] .. ':state', rec[3] .. ' 0')
end
return 1
"""
# KEYS: old record, limit set, all, new record, old prefix index, new prefix index,
# legacy set, grace set. ARGV: owner, now µs, now ISO, old end µs, old end ISO, old index entry,
# channel, old id, old hash, new id, created µs, new hash, new expiry score, new index
# entry, new record fields... Returns 1, or 0 / -1 / -2: not found / not active /
# already rotated (checked in that order: "not active" wins).
_ROTATE = """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'expires_us', 'rotated_to')
if not rec[1] or rec[1] ~= ARGV[1] then return 0 end
if rec[2] ~= '1' or (rec[3] and tonumber(rec[3]) <= tonumber(ARGV[2])) then return -1 end
if rec[4] then return -2 end
redis.call('HSET', KEYS[1], 'rotated_to', ARGV[10], 'updated_at', ARGV[3],
  'expires_us', ARGV[4], 'expires_at', ARGV[5])
redis.call('HSET', KEYS[5], ARGV[9], ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[8])
redis.call('SREM', KEYS[7], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[2])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[8])
redis.call('PUBLISH', ARGV[7], ARGV[9])
redis.call('PUBLISH', ARGV[7] .. ':state', ARGV[9] .. ' ' .. ARGV[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 15))
redis.call('ZADD', KEYS[2], ARGV[13], ARGV[10])
redis.call('ZADD', KEYS[3], ARGV[11], ARGV[10])
redis.call('HSET', KEYS[6], ARGV[12], ARGV[14])
return 1
"""


def record_key(key_id: str) -> str:
    return f"{NAMESPACE}:rec:{key_id}"


def limit_set_key(user_id: str, environment: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:active:{environment}"


def legacy_active_set_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:active"


def all_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:all"


def grace_set_key(user_id: str) -> str:
    """Rotated keys still in their grace, scored by its end (µs): active, but out of the
    limit sets; listed with the active keys until then."""
    return f"{NAMESPACE}:user:{user_id}:grace"


def canary_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:canary"


def prefix_index_key(prefix: str) -> str:
    return f"{NAMESPACE}:prefix:{prefix}"


def usage_key(key_id: str, day: str) -> str:
    return f"{NAMESPACE}:usage:{key_id}:{day}"


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """Uses of one key on one UTC day, waiting to be added to Redis."""

    key_id: str
    day: str
    requests: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class _NewKey:
    """A key about to be written: its record fields and index entry."""

    id: str
    api_key: str
    prefix: str
    hash: str
    created: datetime
    created_at: str
    expires_us: int | None
    expires_at: str | None
    environment: str
    description: str | None
    fields: list[str]
    entry: bytes

    @property
    def created_score(self) -> int:
        return _micros(self.created)

    @property
    def expiry_score(self) -> str | int:
        return NEVER if self.expires_us is None else self.expires_us

    def created_key(self) -> CreatedKey:
        return CreatedKey(
            self.id,
            self.api_key,
            self.prefix,
            self.description,
            self.created_at,
            self.expires_at,
            self.environment,
        )


class KeyStore:
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
    ) -> None:
        self._redis = redis
        self._generate = generate
        self._hasher = hasher
        self.max_active_per_user = max_active_per_user
        self._retry_after = retry_after
        self._durability = durability
        self._on_readonly = on_readonly  # the server we write to was demoted
        self.unconfirmed: dict[str, _Call] = {}  # revocations a failover may have lost
        self.republished = 0
        self._create = redis.register_script(_CREATE)
        self._revoke = redis.register_script(_REVOKE)
        self._create_canary = redis.register_script(_CREATE_CANARY)
        self._rotate = redis.register_script(_ROTATE)
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

    async def _write(
        self, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> builtins.list[Any]:
        """Run a write script once per (keys, args), in one round trip; done only once
        replicated as configured, else StoreUnavailable (the client must retry). Every
        write of key data goes through here."""

        async def queue(pipe: Any) -> None:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

        route = calls[0][0][0]  # all key data shares one slot

        async def run() -> builtins.list[Any]:
            write = self._durability.write
            try:
                return await write(self._redis, route, queue)
            except redis_errors.NoScriptError:  # a new or restarted Redis; nothing ran
                await self._redis.script_load(script.script)
                return await write(self._redis, route, queue)

        replies: builtins.list[Any] = await self._guarded(run())
        return replies

    def _new_key(
        self,
        user_id: str,
        description: str | None,
        environment: str,
        expires_at: datetime | None,
        *,
        canary: bool = False,
        **extra: str,
    ) -> _NewKey:
        api_key = self._generate(environment)
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
            "environment": environment,
            "created_at": created_at,
            "updated_at": created_at,
            **extra,
        }
        expires_us = expires_iso = None
        if expires_at is not None:
            expires_us = _micros(expires_at)
            expires_iso = to_iso(expires_at)
            fields["expires_at"] = expires_iso
            fields["expires_us"] = str(expires_us)
        if description is not None:
            fields["description"] = description
        if canary:
            fields["canary"] = "1"
        entry = _index_entry(key_id, user_id, active=True, expires_us=expires_us, canary=canary)
        return _NewKey(
            id=key_id,
            api_key=api_key,
            prefix=prefix,
            hash=key_hash,
            created=moment,
            created_at=created_at,
            expires_us=expires_us,
            expires_at=expires_iso,
            environment=environment,
            description=description,
            fields=[item for pair in fields.items() for item in pair],
            entry=entry,
        )

    async def create(
        self,
        user_id: str,
        description: str | None,
        *,
        environment: str = LIVE,
        expires_at: datetime | None = None,
    ) -> CreatedKey:
        new = self._new_key(user_id, description, environment, expires_at)
        keys = [
            limit_set_key(user_id, environment),
            all_keys_key(user_id),
            record_key(new.id),
            prefix_index_key(new.prefix),
            legacy_active_set_key(user_id),
            limit_set_key(user_id, LIVE),
        ]
        args: list[str | int | bytes] = [
            self.max_active_per_user,
            new.id,
            new.created_score,
            new.hash,
            _micros(new.created),
            new.expiry_score,
            *new.fields,
            new.entry,
        ]
        created = (await self._write(self._create, [(keys, args)]))[0]
        if not created:
            raise KeyLimitReached(self.max_active_per_user)
        return new.created_key()

    async def create_canary(self, user_id: str, description: str | None) -> CreatedKey:
        """A canary key: verifies like any key but never authenticates (authn.py); outside
        the user's limit and listings, except ``list_canaries``."""
        new = self._new_key(user_id, description, LIVE, None, canary=True)
        keys = [record_key(new.id), canary_keys_key(user_id), prefix_index_key(new.prefix)]
        args: builtins.list[str | int | bytes] = [
            new.id,
            new.created_score,
            new.hash,
            *new.fields,
            new.entry,
        ]
        await self._write(self._create_canary, [(keys, args)])
        return new.created_key()

    async def list(self, user_id: str, include_expired: bool) -> list[dict[str, Any]]:
        if include_expired:
            return await self._listed(all_keys_key(user_id), include_expired)
        return await self._listed_active(user_id)

    async def _listed_active(self, user_id: str) -> builtins.list[dict[str, Any]]:
        """The active keys, newest first, read from the sets that hold the keys that can
        be active (the limit sets, the grace set, the layout before environments): a
        user's revoked and expired keys, however many, cost nothing here. Listing them
        all is ``include_expired``'s job."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for environment in ENVIRONMENTS:
                pipe.zrange(limit_set_key(user_id, environment), 0, -1)
            pipe.zrangebyscore(grace_set_key(user_id), _micros(datetime.now(UTC)), "+inf")
            pipe.smembers(legacy_active_set_key(user_id))
            found = await self._guarded(pipe.execute())
        ids = list(dict.fromkeys(as_text(i) for group in found for i in group))
        views = await self._views(ids, created_in=all_keys_key(user_id))
        return [view for view in views if view["is_active"]]

    async def list_canaries(
        self, user_id: str, include_expired: bool
    ) -> builtins.list[dict[str, Any]]:
        return await self._listed(canary_keys_key(user_id), include_expired)

    async def _listed(self, index: str, include_expired: bool) -> builtins.list[dict[str, Any]]:
        ids = await self._guarded(self._redis.zrevrange(index, 0, -1))
        views = await self._views([as_text(i) for i in ids])
        return [view for view in views if include_expired or view["is_active"]]

    async def _views(
        self, ids: Sequence[str], created_in: str | None = None
    ) -> builtins.list[dict[str, Any]]:
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
            return [_public_view(_decode(r), now) for r in replies if r]
        scored = [
            (created or 0.0, _public_view(_decode(record), now))
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

    async def revoke(
        self,
        key_id: str,
        user_id: str | None,
        *,
        reason: str = REVOKED,
        audit: Mapping[str, str] | None = None,
    ) -> str:
        """Expire a key for good; return its hash (for local cache eviction).
        ``user_id`` None = operator action (any owner). The first revocation's
        ``reason`` and ``audit`` fields (e.g. ``{"revoked_url": ...}``) stay on the
        record; later ones change nothing."""
        owner, prefix, key_hash, environment = await self._owned(
            key_id, user_id, "key_prefix", "hash", "environment"
        )
        if owner is None or prefix is None or key_hash is None:
            raise KeyNotFound()
        keys, args = _revoke_call(
            key_id, owner, prefix, environment or LIVE, datetime.now(UTC), reason, audit
        )
        if not (await self._revocations({key_id: (keys, args)}))[0]:
            raise KeyNotFound()
        return key_hash

    async def _revocations(self, calls: Mapping[str, _Call]) -> builtins.list[Any]:
        """Run revocation scripts (key id → call). One that may have reached a master
        and not its replicas (a failover could undo it) is kept, and run again by
        ``confirm_revocations`` until a master acknowledges it replicated."""
        try:
            return await self._write(self._revoke, builtins.list(calls.values()))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, _MAYBE_APPLIED):
                self.unconfirmed.update(calls)
            raise

    async def confirm_revocations(self) -> None:
        """Run again the revocations that may have been lost (see ``_revocations``); the
        script is idempotent and publishes only when it changes the key."""
        pending = dict(self.unconfirmed)
        if not pending:
            return
        await self._write(self._revoke, builtins.list(pending.values()))
        for key_id in pending:
            self.unconfirmed.pop(key_id, None)
        self.republished += len(pending)
        log.warning("%d revocation(s) a failover may have lost: applied again", len(pending))

    async def rotate(
        self, key_id: str, user_id: str | None, grace_seconds: int
    ) -> tuple[CreatedKey, str]:
        """Replace an active key by a new one with the same description, environment
        and expiry; the old one keeps working for ``grace_seconds`` (never past its own
        expiry). Returns the new key and the old key's hash (for local cache eviction).
        ``user_id`` None = operator action (any owner)."""
        (
            owner,
            prefix,
            old_hash,
            environment,
            description,
            old_expires,
            old_expires_at,
        ) = await self._owned(
            key_id,
            user_id,
            "key_prefix",
            "hash",
            "environment",
            "description",
            "expires_us",
            "expires_at",
        )
        if owner is None or prefix is None or old_hash is None:
            raise KeyNotFound()
        environment = environment or LIVE
        inherited = None
        if old_expires is not None and old_expires_at is not None:
            inherited = parse_iso(old_expires_at)
        new = self._new_key(owner, description, environment, inherited, rotated_from=key_id)
        now_us = _micros(new.created)
        end_us = now_us + grace_seconds * _US
        end_iso = to_iso(new.created + timedelta(seconds=grace_seconds))
        if old_expires is not None and old_expires_at is not None and int(old_expires) < end_us:
            end_us, end_iso = int(old_expires), old_expires_at
        old_entry = _index_entry(key_id, owner, active=True, expires_us=end_us)
        keys = [
            record_key(key_id),
            limit_set_key(owner, environment),
            all_keys_key(owner),
            record_key(new.id),
            prefix_index_key(prefix),
            prefix_index_key(new.prefix),
            legacy_active_set_key(owner),
            grace_set_key(owner),
        ]
        args: list[str | int | bytes] = [
            owner,
            now_us,
            new.created_at,
            end_us,
            end_iso,
            old_entry,
            REVOCATION_CHANNEL,
            key_id,
            old_hash,
            new.id,
            new.created_score,
            new.hash,
            new.expiry_score,
            new.entry,
            *new.fields,
        ]
        outcome = (await self._write(self._rotate, [(keys, args)]))[0]
        if outcome == 0:
            raise KeyNotFound()
        if outcome == -1:
            raise KeyNotActive()
        if outcome == -2:
            raise KeyAlreadyRotated()
        return new.created_key(), old_hash

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
        return VerifiedKey(
            id=entry["id"],
            user_id=entry["user_id"],
            prefix=prefix,
            active=bool(entry["active"]),
            expires_at=entry.get("expires_at"),
            environment=keyformat.environment_of(prefix),
            canary=bool(entry.get("canary", False)),
        )

    async def revoke_many(self, revocations: Sequence[Revocation]) -> None:
        """Revoke many verified keys with the revocation script DELETE uses (each is
        atomic and published to every instance), all in one pipelined round trip."""
        if not revocations:
            return
        moment = datetime.now(UTC)
        calls = {
            r.key.id: _revoke_call(
                r.key.id,
                r.key.user_id,
                r.key.prefix,
                r.key.environment,
                moment,
                r.reason,
                r.audit,
            )
            for r in revocations
        }
        await self._revocations(calls)

    async def touch(self, last_used: Mapping[str, str], counts: Sequence[UsageCounts] = ()) -> None:
        """Record last-use times (key id → ISO time) and add per-day use counts, all in
        one pipelined round trip."""
        if not last_used and not counts:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id, moment in last_used.items():
                pipe.hset(record_key(key_id), "last_used_at", moment)
            for used in counts:
                name = usage_key(used.key_id, used.day)
                if used.requests:
                    pipe.hincrby(name, "requests", used.requests)
                if used.rate_limited:
                    pipe.hincrby(name, "rate_limited", used.rate_limited)
                pipe.expire(name, USAGE_KEPT_DAYS * 86400)
            await self._guarded(pipe.execute())

    async def usage(
        self, key_id: str, user_id: str | None, days: Sequence[str]
    ) -> tuple[str, builtins.list[DailyUsage]]:
        """The key's prefix and its counts on ``days`` (YYYY-MM-DD, UTC), in one round
        trip; KeyNotFound for an unknown or another user's key (``user_id`` None: any
        owner's)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(record_key(key_id), "user_id", "key_prefix")
            for day in days:
                pipe.hmget(usage_key(key_id, day), "requests", "rate_limited")
            replies = await self._guarded(pipe.execute())
        owner, prefix = (None if v is None else as_text(v) for v in replies[0])
        if owner is None or prefix is None or (user_id is not None and owner != user_id):
            raise KeyNotFound()
        daily = [
            DailyUsage(day, int(requests or 0), int(limited or 0))
            for day, (requests, limited) in zip(days, replies[1:], strict=True)
        ]
        return prefix, daily


@dataclass(frozen=True, slots=True)
class Revocation:
    """A verified key to revoke, why, and audit fields for its record."""

    key: VerifiedKey
    key_hash: str
    reason: str
    audit: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Revocation(key_id={self.key.id!r}, reason={self.reason!r})"


def _revoke_call(
    key_id: str,
    owner: str,
    prefix: str,
    environment: str,
    moment: datetime,
    reason: str,
    audit: Mapping[str, str] | None,
) -> tuple[list[str], list[str | int | bytes]]:
    """KEYS and ARGV of the revocation script, for one key."""
    keys = [
        record_key(key_id),
        limit_set_key(owner, environment),
        prefix_index_key(prefix),
        legacy_active_set_key(owner),
    ]
    flat_audit = [item for pair in (audit or {}).items() for item in pair]
    args: list[str | int | bytes] = [
        owner,
        to_iso(moment),
        _micros(moment),
        REVOCATION_CHANNEL,
        _index_entry(key_id, owner, active=False),
        reason,
        *flat_audit,
    ]
    return keys, args


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)  # exact, unlike timestamp()


def _index_entry(
    key_id: str,
    user_id: str,
    *,
    active: bool,
    expires_us: int | None = None,
    canary: bool = False,
) -> bytes:
    # Entries written by earlier versions also carry "hash", a copy of their field: ignored.
    entry: dict[str, Any] = {"id": key_id, "user_id": user_id, "active": active}
    if expires_us is not None:
        entry["expires_at"] = expires_us / _US
    if canary:
        entry["canary"] = True
    return orjson.dumps(entry)


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else value


def _decode(record: Mapping[Any, Any]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in record.items()}


def _public_view(record: dict[str, str], now: float) -> dict[str, Any]:
    expires_at = record.get("expires_at")
    expires_us = record.get("expires_us")
    if expires_us is not None:
        expires = int(expires_us) / _US
    elif expires_at is not None:  # a record revoked before expires_us existed
        expires = parse_iso(expires_at).timestamp()
    else:
        expires = None
    active = record.get("is_active") == "1" and (expires is None or expires > now)
    return {
        "id": record["id"],
        "key_prefix": record["key_prefix"],
        "description": record.get("description"),
        "is_active": active,
        "last_used_at": record.get("last_used_at"),
        "expires_at": expires_at,
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "environment": record.get("environment", LIVE),
        "rotated_to": record.get("rotated_to"),
        "revoked_reason": record.get("revoked_reason"),
    }
