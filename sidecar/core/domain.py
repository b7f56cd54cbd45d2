"""The key rules every layer shares: value types, their JSON, and the limits on input.

Pure: no I/O, no adapters. The store, the cache, the API, the CLI and the logs import
these instead of restating them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

KEYS_API_PATH = "/api/v1/api-keys"  # served by the sidecar itself, JWT only; never public
# "sk_live_" + 6 characters: the public part of a key, shown in listings and logs.
PREFIX_LENGTH = 14
MAX_DESCRIPTION = 500
USER_ID_RULE = "a user id is 1 to 256 printable ASCII characters, without spaces"
_USER_ID = re.compile(r"[\x21-\x7e]{1,256}")


LIVE = "live"
TEST = "test"
ENVIRONMENTS = (LIVE, TEST)
Environment = Literal["live", "test"]
# Key lifecycle (SPEC Part 2): expiry at least this far ahead (the longest is
# configured: auth.api_keys.max_lifetime_days), rotation grace, usage window.
MIN_EXPIRY_LEAD_SECONDS = 60
MAX_GRACE_SECONDS = 7 * 86400
DEFAULT_GRACE_SECONDS = 86400
MAX_USAGE_DAYS = 90
DEFAULT_USAGE_DAYS = 30
# Revocation reasons recorded on the key (the first one stays).
REVOKED = "revoked"
LEAKED = "leaked"


def key_prefix(value: str) -> str:
    return value[:PREFIX_LENGTH]


def valid_user_id(value: str) -> bool:
    return _USER_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """What verification learns about a key; holds no secret."""

    id: str
    user_id: str
    prefix: str
    active: bool
    expires_at: float | None  # epoch seconds
    canary: bool = False
    environment: str = LIVE

    def usable_at(self, now: float) -> bool:
        return self.active and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    api_key: str
    key_prefix: str
    description: str | None
    created_at: str
    expires_at: str | None = None
    environment: str = LIVE

    def __repr__(self) -> str:
        return f"CreatedKey(id={self.id!r}, key_prefix={self.key_prefix!r})"

    def as_json(self) -> dict[str, Any]:
        """The create answer: the only place the full key is ever shown."""
        return {
            "id": self.id,
            "api_key": self.api_key,
            "key_prefix": self.key_prefix,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "environment": self.environment,
        }


@dataclass(frozen=True, slots=True)
class DailyUsage:
    date: str  # YYYY-MM-DD, UTC
    requests: int
    rate_limited: int


def usage_json(key_id: str, prefix: str, days: list[DailyUsage]) -> dict[str, Any]:
    return {
        "id": key_id,
        "key_prefix": prefix,
        "days": [
            {"date": d.date, "requests": d.requests, "rate_limited": d.rate_limited} for d in days
        ],
        "total_requests": sum(d.requests for d in days),
    }


def expired_json() -> dict[str, Any]:
    return {"message": "API key expired successfully", "success": True}


def key_list_json(keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {"api_keys": keys, "total": len(keys)}
