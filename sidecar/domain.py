"""The key rules every layer shares: value types, their JSON, and the limits on input.

Pure: no I/O, no adapters. The store, the cache, the API, the CLI and the logs import
these instead of restating them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# "sk_live_" + 6 characters: the public part of a key, shown in listings and logs.
PREFIX_LENGTH = 14
MAX_DESCRIPTION = 500
USER_ID_RULE = "a user id is 1 to 256 printable ASCII characters, without spaces"
_USER_ID = re.compile(r"[\x21-\x7e]{1,256}")


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

    def usable_at(self, now: float) -> bool:
        return self.active and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    api_key: str
    key_prefix: str
    description: str | None
    created_at: str

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
        }


def expired_json() -> dict[str, Any]:
    return {"message": "API key expired successfully", "success": True}


def key_list_json(keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {"api_keys": keys, "total": len(keys)}
