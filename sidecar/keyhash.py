"""Keyed hashing of API keys: only HMAC-SHA256(secret, key) is ever stored.

Without the server-side secret, a leaked Redis dump does not allow offline guessing.
"""

from __future__ import annotations

import hashlib
import hmac


class KeyHasher:
    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the key-hash secret must be at least 16 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "KeyHasher(secret=***)"

    def hash(self, key: str) -> str:
        return hmac.new(self._secret, key.encode("ascii"), hashlib.sha256).hexdigest()
