"""Who is calling: API key (``X-API-Key`` or ``Bearer sk_...``) or JWT (``Bearer <jwt>``).

Three outcomes, as in Starlette's authentication: an Identity, NotAuthenticated
(with a machine-readable reason), or StoreUnavailable when an API key cannot be
verified because Redis is down and the cache cannot vouch for it.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from sidecar import keyformat
from sidecar.domain import VerifiedKey
from sidecar.errors import NotAuthenticated, StoreUnavailable
from sidecar.jwt_auth import JwtVerifier
from sidecar.keycache import KeyCache
from sidecar.keyhash import KeyHasher
from sidecar.store import KeyStore
from sidecar.usage import UsageTracker

API_KEY = "api_key"
JWT = "jwt"


class Identity(NamedTuple):
    user_id: str
    method: str  # API_KEY or JWT
    key_id: str | None = None
    key_prefix: str | None = None


class Credential(NamedTuple):
    kind: str  # API_KEY or JWT
    value: str

    def __repr__(self) -> str:
        return f"Credential(kind={self.kind!r})"


def credential_from(api_key_header: bytes | None, authorization: bytes | None) -> Credential:
    """Pick the request's credential; ``X-API-Key``, when present, is the one used."""
    if api_key_header is not None:
        return Credential(API_KEY, _ascii(api_key_header))
    if authorization is None:
        raise NotAuthenticated("missing")
    scheme, _, token = _ascii(authorization).strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("malformed")
    return Credential(API_KEY if keyformat.looks_like_api_key(token) else JWT, token)


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise NotAuthenticated("malformed") from None


class Authenticator:
    def __init__(
        self,
        *,
        store: KeyStore,
        hasher: KeyHasher,
        cache: KeyCache,
        jwt_verifier: JwtVerifier,
        usage: UsageTracker,
        retry_after: int,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._cache = cache
        self._jwt = jwt_verifier
        self._usage = usage
        self._retry_after = retry_after
        self.cache_hits = 0
        self.cache_misses = 0

    async def authenticate(self, credential: Credential) -> Identity:
        if credential.kind == JWT:
            return Identity(await self._jwt.user_id(credential.value), JWT)
        return await self._api_key(credential.value)

    async def jwt_only(self, credential: Credential) -> str:
        if credential.kind != JWT:
            raise NotAuthenticated("api_key_not_allowed")
        return await self._jwt.user_id(credential.value)

    async def _api_key(self, value: str) -> Identity:
        parsed = keyformat.parse(value)
        if parsed is None:
            raise NotAuthenticated("malformed")
        key_hash = self._hasher.hash(value)
        key = self._cache.fresh(key_hash)
        if key is None:
            self.cache_misses += 1
            key = await self._lookup(parsed, key_hash)
        else:
            self.cache_hits += 1
        now = time.time()
        if not key.usable_at(now):
            raise NotAuthenticated("revoked" if not key.active else "expired")
        self._usage.record(key.id)
        return Identity(key.user_id, API_KEY, key.id, key.prefix)

    async def _lookup(self, parsed: keyformat.ParsedKey, key_hash: str) -> VerifiedKey:
        if self._cache.known_unknown(key_hash):
            raise NotAuthenticated("unknown")
        epoch = self._cache.epoch
        try:
            key = await self._store.verify(parsed, key_hash)
        except StoreUnavailable as exc:
            stale = self._cache.stale(key_hash)
            if stale is not None:
                return stale
            unavailable = StoreUnavailable()
            unavailable.retry_after = self._retry_after
            raise unavailable from exc
        if key is None:
            self._cache.put_unknown(key_hash, epoch)
            raise NotAuthenticated("unknown")
        self._cache.put(key_hash, key, epoch)
        return key
