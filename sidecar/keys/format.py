"""The API key format: ``sk_live_`` (or ``sk_test_``) + 42 random base62 chars +
6-char base62 CRC32 of everything before it.

Pure functions only. The checksum lets us reject mistyped or forged-looking keys
before any network round trip, and lets secret scanners recognise keys offline.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

from sidecar.core.domain import ENVIRONMENTS, LIVE, TEST, key_prefix

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 42
CHECKSUM_LENGTH = 6
KEY_LENGTH = len("sk_live_") + RANDOM_LENGTH + CHECKSUM_LENGTH  # 56, for either environment

_SHAPE = re.compile(rf"sk_(?:live|test)_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def base62(number: int, width: int) -> str:
    """Most significant digit first, left-padded with ``0`` to ``width``."""
    if number < 0:
        raise ValueError("base62 takes a non-negative number")
    digits: list[str] = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    return base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate(start: str = "", environment: str = LIVE) -> str:
    """A new key; ``start`` fixes the first random characters (tests use it to force
    many keys onto one prefix)."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment: {environment!r}")
    fill = RANDOM_LENGTH - len(start)
    random_part = start + "".join(secrets.choice(ALPHABET) for _ in range(fill))
    body = f"sk_{environment}_{random_part}"
    return body + checksum(body)


def environment_of(prefix: str) -> str:
    """The environment a well-formed key (or its prefix) belongs to."""
    return TEST if prefix.startswith("sk_test_") else LIVE


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key: str
    prefix: str

    def __repr__(self) -> str:  # never let a key reach a log through a repr
        return f"ParsedKey(prefix={self.prefix!r})"


def looks_like_api_key(value: str) -> bool:
    """A credential that starts like an API key is an API key, never a JWT."""
    return value.startswith("sk_")


def parse(value: str) -> ParsedKey | None:
    """Return the parsed key, or None when the value is not a well-formed key.

    No I/O: shape and checksum only. Length is checked first so absurd input is
    rejected in O(1).
    """
    if len(value) != KEY_LENGTH or not _SHAPE.fullmatch(value):
        return None
    body, check = value[:-CHECKSUM_LENGTH], value[-CHECKSUM_LENGTH:]
    if checksum(body) != check:
        return None
    return ParsedKey(key=value, prefix=key_prefix(value))
