"""What the write scripts (schema.py) are called with: a new key minted into its record
fields and index entry, and the KEYS and ARGV of each script with the audit events it
records (audit_events.py), built from plain values so the store only runs them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sidecar.core.domain import (
    CANARY_CREATED,
    KEY_CREATED,
    KEY_LEAKED,
    KEY_REVOKED,
    KEY_ROTATED,
    KEY_UPDATED,
    LEAKED,
    LIVE,
    AuditContext,
    CreatedKey,
    VerifiedKey,
    key_prefix,
)
from sidecar.core.timeutil import to_iso
from sidecar.keys.audit_events import new_event
from sidecar.keys.audit_trail import Audited
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import (
    NEVER,
    REVOCATION_CHANNEL,
    UPDATE_READS,
    US,
    all_keys_key,
    canary_keys_key,
    expected,
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

Call = tuple[Sequence[str], Sequence[Any]]  # a script's KEYS and ARGV


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key about to be written: its record fields and index entry."""

    id: str
    user_id: str
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
    scopes: tuple[str, ...] | None = None
    allowed_ips: tuple[str, ...] | None = None

    @property
    def created_score(self) -> int:
        return micros(self.created)

    @property
    def expiry_score(self) -> str | int:
        return NEVER if self.expires_us is None else self.expires_us

    def event(self, action: str, context: AuditContext, **extra: Any) -> dict[str, Any]:
        """The audit event of this key's creation (or of ``action`` at that moment)."""
        return new_event(
            action,
            context,
            time=self.created_at,
            user_id=self.user_id,
            key_id=self.id,
            key_prefix=self.prefix,
            **extra,
        )

    def created_key(self) -> CreatedKey:
        return CreatedKey(
            self.id,
            self.api_key,
            self.prefix,
            self.description,
            self.created_at,
            self.expires_at,
            self.environment,
            self.scopes,
            self.allowed_ips,
        )


def mint_key(
    api_key: str,
    hasher: KeyHasher,
    user_id: str,
    description: str | None,
    environment: str,
    expires_at: datetime | None,
    *,
    canary: bool = False,
    scopes: tuple[str, ...] | None = None,
    allowed_ips: tuple[str, ...] | None = None,
    **extra: str,
) -> NewKey:
    """A new key's record fields and index entry, from its secret. ``scopes`` and
    ``allowed_ips`` (normalised CIDRs): its restrictions, None for none."""
    prefix = key_prefix(api_key)
    key_hash = hasher.hash(api_key)
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
        expires_us = micros(expires_at)
        expires_iso = to_iso(expires_at)
        fields["expires_at"] = expires_iso
        fields["expires_us"] = str(expires_us)
    if description is not None:
        fields["description"] = description
    if canary:
        fields["canary"] = "1"
    if scopes is not None:
        fields["scopes"] = list_field(scopes)
    if allowed_ips is not None:
        fields["allowed_ips"] = list_field(allowed_ips)
    entry = index_entry(
        key_id,
        user_id,
        active=True,
        expires_us=expires_us,
        canary=canary,
        scopes=scopes,
        allowed_ips=allowed_ips,
    )
    return NewKey(
        id=key_id,
        user_id=user_id,
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
        scopes=scopes,
        allowed_ips=allowed_ips,
    )


def revoke_call(
    key_id: str,
    owner: str,
    prefix: str,
    environment: str,
    moment: datetime,
    reason: str,
    audit: Mapping[str, str] | None,
    context: AuditContext,
) -> Audited:
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
        micros(moment),
        REVOCATION_CHANNEL,
        index_entry(key_id, owner, active=False),
        reason,
        *flat_audit,
    ]
    extra = {"url": (audit or {}).get("revoked_url")} if reason == LEAKED else {}
    event = new_event(
        KEY_LEAKED if reason == LEAKED else KEY_REVOKED,
        context,
        time=to_iso(moment),
        user_id=owner,
        key_id=key_id,
        key_prefix=prefix,
        **extra,
    )
    return Audited(keys, args, [event])


def create_call(new: NewKey, user_id: str, max_active: int, context: AuditContext) -> Audited:
    """CREATE: the record, the limit set of its environment and the indexes."""
    keys = [
        limit_set_key(user_id, new.environment),
        all_keys_key(user_id),
        record_key(new.id),
        prefix_index_key(new.prefix),
        legacy_active_set_key(user_id),
        limit_set_key(user_id, LIVE),
        scoped_keys_key(),
    ]
    args: list[str | int | bytes] = [
        max_active,
        new.id,
        new.created_score,
        new.hash,
        micros(new.created),
        new.expiry_score,
        *new.fields,
        new.entry,
    ]
    return Audited(keys, args, [new.event(KEY_CREATED, context)])


def canary_call(new: NewKey, user_id: str, context: AuditContext) -> Audited:
    """CREATE_CANARY: the record, the user's canary set and the prefix index."""
    keys = [record_key(new.id), canary_keys_key(user_id), prefix_index_key(new.prefix)]
    args: list[str | int | bytes] = [
        new.id,
        new.created_score,
        new.hash,
        *new.fields,
        new.entry,
    ]
    return Audited(keys, args, [new.event(CANARY_CREATED, context)])


def rotate_call(
    new: NewKey,
    key_id: str,
    owner: str,
    prefix: str,
    old_hash: str,
    grace_seconds: int,
    old_end: tuple[int, str] | None,
    copied: Sequence[str | None],
    context: AuditContext,
) -> Audited:
    """ROTATE: the old key usable until the end of its grace (never past its own expiry,
    ``old_end`` as µs and ISO), the new one written in the same step. ``copied``: the
    old record's ROTATE_COPIES fields as read (the new key was minted with them; the
    old key's entry keeps them)."""
    environment = new.environment
    now_us = micros(new.created)
    end_us = now_us + grace_seconds * US
    end_iso = to_iso(new.created + timedelta(seconds=grace_seconds))
    if old_end is not None and old_end[0] < end_us:
        end_us, end_iso = old_end
    old_entry = index_entry(
        key_id,
        owner,
        active=True,
        expires_us=end_us,
        scopes=new.scopes,
        allowed_ips=new.allowed_ips,
    )
    keys = [
        record_key(key_id),
        limit_set_key(owner, environment),
        all_keys_key(owner),
        record_key(new.id),
        prefix_index_key(prefix),
        prefix_index_key(new.prefix),
        legacy_active_set_key(owner),
        grace_set_key(owner),
        scoped_keys_key(),
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
        *(expected(value) for value in copied),
        *new.fields,
    ]
    rotated = new_event(
        KEY_ROTATED,
        context,
        time=new.created_at,
        user_id=owner,
        key_id=key_id,
        key_prefix=prefix,
        rotated_to=new.id,
    )
    created = new.event(KEY_CREATED, context, rotated_from=key_id)
    return Audited(keys, args, [rotated, created])


def update_call(
    key_id: str,
    owner: str,
    prefix: str,
    moment: datetime,
    read: Mapping[str, str | None],
    changed: Mapping[str, str | None],
    entry: bytes,
    changes: Mapping[str, Mapping[str, Any]],
    context: AuditContext,
) -> Audited:
    """UPDATE: ``changed`` fields set (None: deleted) on a record that still holds the
    UPDATE_READS values ``read``, and its index entry replaced by ``entry``."""
    keys = [record_key(key_id), prefix_index_key(prefix), scoped_keys_key()]
    setting = [(name, value) for name, value in changed.items() if value is not None]
    deleting = [name for name, value in changed.items() if value is None]
    args: list[str | int | bytes] = [
        owner,
        micros(moment),
        to_iso(moment),
        REVOCATION_CHANNEL,
        entry,
        *(expected(read.get(name)) for name in UPDATE_READS),
        len(setting),
        *(item for pair in setting for item in pair),
        *deleting,
    ]
    event = new_event(
        KEY_UPDATED,
        context,
        time=to_iso(moment),
        user_id=owner,
        key_id=key_id,
        key_prefix=prefix,
        changes=changes,
    )
    return Audited(keys, args, [event] if changes else [])


@dataclass(frozen=True, slots=True)
class Revocation:
    """A verified key to revoke, why, and audit fields for its record."""

    key: VerifiedKey
    key_hash: str
    reason: str
    audit: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Revocation(key_id={self.key.id!r}, reason={self.reason!r})"
