"""The public JSON view of a key record, as the key API lists it (never the hash)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.core.domain import LIVE
from sidecar.core.timeutil import parse_iso
from sidecar.keys.schema import US


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else value


def decode(record: Mapping[Any, Any]) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in record.items()}


def listed(stored: str) -> list[str]:
    """A record's ``scopes`` or ``allowed_ips`` field (a JSON list) as a list."""
    values: list[str] = orjson.loads(stored)
    return values


def public_view(record: dict[str, str], now: float) -> dict[str, Any]:
    expires_at = record.get("expires_at")
    expires_us = record.get("expires_us")
    if expires_us is not None:
        expires = int(expires_us) / US
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
        "scopes": _list_or_none(record.get("scopes")),
        "allowed_ips": _list_or_none(record.get("allowed_ips")),
    }


def _list_or_none(stored: str | None) -> list[str] | None:
    return None if stored is None else listed(stored)
