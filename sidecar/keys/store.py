"""The API-key store: the only code that reads or writes key data in Redis (the schema
and its Lua scripts are in schema.py, the JSON view in view.py)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sidecar.core.domain import (
    ENVIRONMENTS,
    LIVE,
    OPERATOR_CONTEXT,
    REVOKED,
    AuditContext,
    CreatedKey,
    DailyUsage,
    NetworkUsage,
    VerifiedKey,
    network_of,
)
from sidecar.core.errors import (
    KeyAlreadyRotated,
    KeyChangedMeanwhile,
    KeyLimitReached,
    KeyNotActive,
    KeyNotFound,
    StoreUnavailable,
)
from sidecar.core.timeutil import parse_iso
from sidecar.keys import format as keyformat
from sidecar.keys.audit_schema import EVENT_ONLY
from sidecar.keys.audit_trail import Audited, AuditTrail, Call
from sidecar.keys.calls import (
    Revocation,
    canary_call,
    create_call,
    mint_key,
    revoke_call,
    rotate_call,
    update_call,
)
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import (
    CREATE,
    CREATE_CANARY,
    REVOKE,
    ROTATE,
    ROTATE_COPIES,
    UPDATE,
    UPDATE_READS,
    all_keys_key,
    canary_keys_key,
    grace_set_key,
    index_entry,
    legacy_active_set_key,
    limit_set_key,
    list_field,
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
from sidecar.redisconn.client import (
    REDIS_ERRORS,
    UNREPLICATED,
    Durability,
    NotReplicated,
    error_code,
    unexpected,
)

log = logging.getLogger("sidecar.store")

# A write that failed this way may still have been applied by the master it reached.
_MAYBE_APPLIED = (NotReplicated, redis_errors.ConnectionError, redis_errors.TimeoutError)
# Attempts of a write that found the fields it was built from changed meanwhile (a
# concurrent PATCH or rotation of the same key); each conflict means another write won.
_RACES = 5
# Scoped keys read by the check at start for scopes the config no longer has.
SCOPED_READ_LIMIT = 100_000
# What a PATCH may change; absent from a body = unchanged (``Unchanged``).
EDITABLE = ("description", "scopes", "allowed_ips")


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


@dataclass(frozen=True, slots=True)
class Change:
    """A field's value before and after an update (normalised, as the API shows them)."""

    before: Any
    after: Any


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
        return await self.audit.run(lambda sealed: self._execute(script, sealed), calls)

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

    async def create(
        self,
        user_id: str,
        description: str | None,
        *,
        environment: str = LIVE,
        expires_at: datetime | None = None,
        scopes: tuple[str, ...] | None = None,
        allowed_ips: tuple[str, ...] | None = None,
        context: AuditContext = OPERATOR_CONTEXT,
    ) -> CreatedKey:
        """A new key; ``scopes`` (configured names) and ``allowed_ips`` (normalised
        CIDRs) restrict it, None for none."""
        new = mint_key(
            self._generate(environment),
            self._hasher,
            user_id,
            description,
            environment,
            expires_at,
            scopes=scopes,
            allowed_ips=allowed_ips,
        )
        call = create_call(new, user_id, self.max_active_per_user, context)
        created = (await self._write(self._create, [call]))[0]
        if not created:
            raise KeyLimitReached(self.max_active_per_user)
        return new.created_key()

    async def create_canary(
        self, user_id: str, description: str | None, context: AuditContext = OPERATOR_CONTEXT
    ) -> CreatedKey:
        """A canary key: verifies like any key but never authenticates
        (auth/credentials.py); outside the user's limit and listings, except
        ``list_canaries``."""
        new = mint_key(
            self._generate(LIVE), self._hasher, user_id, description, LIVE, None, canary=True
        )
        await self._write(self._create_canary, [canary_call(new, user_id, context)])
        return new.created_key()

    async def record_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Audit events that go with no change of key data (``canary.used``)."""
        if events:
            await self._write(self._event_only, [Audited((), (), [e]) for e in events])

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

    async def revoke(
        self,
        key_id: str,
        user_id: str | None,
        *,
        reason: str = REVOKED,
        audit: Mapping[str, str] | None = None,
        context: AuditContext = OPERATOR_CONTEXT,
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
        call = revoke_call(
            key_id, owner, prefix, environment or LIVE, datetime.now(UTC), reason, audit, context
        )
        if not (await self._revocations({key_id: call}))[0]:
            raise KeyNotFound()
        return key_hash

    async def _revocations(self, calls: Mapping[str, Audited]) -> list[Any]:
        """Run revocation scripts (key id → call). One that may have reached a master
        and not its replicas (a failover could undo it) is kept, and run again by
        ``confirm_revocations`` until a master acknowledges it replicated."""
        try:
            return await self._write(self._revoke, list(calls.values()))
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
        await self._write(self._revoke, list(pending.values()))
        for key_id in pending:
            self.unconfirmed.pop(key_id, None)
        self.republished += len(pending)
        log.warning("%d revocation(s) a failover may have lost: applied again", len(pending))

    async def rotate(
        self,
        key_id: str,
        user_id: str | None,
        grace_seconds: int,
        context: AuditContext = OPERATOR_CONTEXT,
    ) -> tuple[CreatedKey, str]:
        """Replace an active key by a new one with the same description, environment,
        expiry, scopes and allowed addresses; the old one keeps working (as restricted
        as it was) for ``grace_seconds`` (never past its own expiry). Returns the new
        key and the old key's hash (for local cache eviction). ``user_id`` None =
        operator action (any owner)."""
        for _ in range(_RACES):
            outcome = await self._rotate_once(key_id, user_id, grace_seconds, context)
            if outcome is not None:
                return outcome
        raise KeyChangedMeanwhile()

    async def _rotate_once(
        self, key_id: str, user_id: str | None, grace_seconds: int, context: AuditContext
    ) -> tuple[CreatedKey, str] | None:
        (
            owner,
            prefix,
            old_hash,
            environment,
            description,
            old_expires,
            old_expires_at,
            *copied,
        ) = await self._owned(
            key_id,
            user_id,
            "key_prefix",
            "hash",
            "environment",
            "description",
            "expires_us",
            "expires_at",
            *ROTATE_COPIES,
        )
        if owner is None or prefix is None or old_hash is None:
            raise KeyNotFound()
        environment = environment or LIVE
        inherited = old_end = None
        if old_expires is not None and old_expires_at is not None:
            inherited = parse_iso(old_expires_at)
            old_end = (int(old_expires), old_expires_at)
        scopes, allowed_ips = (_listed_field(value) for value in copied)
        new = mint_key(
            self._generate(environment),
            self._hasher,
            owner,
            description,
            environment,
            inherited,
            scopes=scopes,
            allowed_ips=allowed_ips,
            rotated_from=key_id,
        )
        call = rotate_call(
            new, key_id, owner, prefix, old_hash, grace_seconds, old_end, copied, context
        )
        outcome = (await self._write(self._rotate, [call]))[0]
        if outcome == 0:
            raise KeyNotFound()
        if outcome == -1:
            raise KeyNotActive()
        if outcome == -2:
            raise KeyAlreadyRotated()
        if outcome == -3:
            return None  # its restrictions changed since read: read them again
        return new.created_key(), old_hash

    async def update(
        self,
        key_id: str,
        user_id: str | None,
        *,
        description: str | None = UNCHANGED,
        scopes: tuple[str, ...] | None = UNCHANGED,
        allowed_ips: tuple[str, ...] | None = UNCHANGED,
        context: AuditContext = OPERATOR_CONTEXT,
    ) -> tuple[dict[str, Any], dict[str, Change], str]:
        """Change an active key's description, scopes or allowed addresses (None clears
        one; UNCHANGED leaves it), in its record and its index entry at once, published
        so every instance looks the key up again. Returns the key as listed, the
        fields that changed (from/to, as the API shows them) and the key's hash (for
        local cache eviction). KeyNotFound, or KeyNotActive for a revoked or expired
        key. ``user_id`` None = operator action (any owner)."""
        wanted = {"description": description, "scopes": scopes, "allowed_ips": allowed_ips}
        for _ in range(_RACES):
            owner, prefix, key_hash, *values = await self._owned(
                key_id, user_id, "key_prefix", "hash", *UPDATE_READS
            )
            read = dict(zip(UPDATE_READS, values, strict=True))
            if owner is None or prefix is None or key_hash is None or read["canary"]:
                raise KeyNotFound()
            changes: dict[str, Change] = {}
            fields: dict[str, str | None] = {}
            for name, value in wanted.items():
                if value is UNCHANGED:
                    continue
                stored = None if value is None else _stored(value)
                before = _shown(name, read[name])
                if stored != read[name]:
                    changes[name] = Change(before, _shown(name, stored))
                fields[name] = stored
            after = {**read, **fields}
            expires_us = after["expires_us"]
            entry = index_entry(
                key_id,
                owner,
                active=True,
                expires_us=None if expires_us is None else int(expires_us),
                scopes=_listed_field(after["scopes"]),
                allowed_ips=_listed_field(after["allowed_ips"]),
            )
            moment = datetime.now(UTC)
            shown = {n: {"from": c.before, "to": c.after} for n, c in changes.items()}
            call = update_call(key_id, owner, prefix, moment, read, fields, entry, shown, context)
            outcome = (await self._write(self._update, [call]))[0]
            if outcome == 0:
                raise KeyNotFound()
            if outcome == -1:
                raise KeyNotActive()
            if outcome == 1:
                views = await self._views([key_id])
                if not views:
                    raise KeyNotFound()
                return views[0], changes, key_hash
        raise KeyChangedMeanwhile()

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
            networks=None if allowed is None else tuple(network_of(n) for n in allowed),
        )

    async def revoke_many(
        self, revocations: Sequence[Revocation], context: AuditContext = OPERATOR_CONTEXT
    ) -> None:
        """Revoke many verified keys with the revocation script DELETE uses (each is
        atomic and published to every instance), all in one pipelined round trip."""
        if not revocations:
            return
        moment = datetime.now(UTC)
        calls = {
            r.key.id: revoke_call(
                r.key.id,
                r.key.user_id,
                r.key.prefix,
                r.key.environment,
                moment,
                r.reason,
                r.audit,
                context,
            )
            for r in revocations
        }
        await self._revocations(calls)

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


def _stored(value: str | tuple[str, ...]) -> str:
    """A field's value as its record holds it."""
    return value if isinstance(value, str) else list_field(value)


def _shown(name: str, stored: str | None) -> Any:
    """A record field as the API shows it."""
    if stored is None or name == "description":
        return stored
    return listed(stored)


def _listed_field(stored: str | None) -> tuple[str, ...] | None:
    return None if stored is None else tuple(listed(stored))
