"""The API-key store: the only code that reads or writes key data in Redis. Its writes
are here, its reads in reads.py, its access to Redis in access.py; the schema and its
Lua scripts are in schema.py, the JSON view in view.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import exceptions as redis_errors

from sidecar.core.domain import (
    LIVE,
    OPERATOR_CONTEXT,
    REVOKED,
    AuditContext,
    CreatedKey,
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
from sidecar.keys.audit_trail import Audited
from sidecar.keys.calls import (
    Revocation,
    canary_call,
    create_call,
    mint_key,
    revoke_call,
    rotate_call,
    update_call,
)
from sidecar.keys.reads import KeyReads
from sidecar.keys.schema import (
    ROTATE_COPIES,
    UPDATE_READS,
    index_entry,
    list_field,
)
from sidecar.keys.view import listed
from sidecar.redisconn.client import (
    NotReplicated,
)

log = logging.getLogger("sidecar.store")

# A write that failed this way may still have been applied by the master it reached.
_MAYBE_APPLIED = (NotReplicated, redis_errors.ConnectionError, redis_errors.TimeoutError)
# Attempts of a write that found the fields it was built from changed meanwhile (a
# concurrent PATCH or rotation of the same key); each conflict means another write won.
_RACES = 5
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


class KeyStore(KeyReads):
    """Every change of key data, each one Lua script (schema.py) with its audit event;
    the reads are KeyReads'."""

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
