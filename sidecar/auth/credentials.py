"""Who is calling: API key (``X-API-Key`` or ``Bearer sk_...``) or JWT (``Bearer <jwt>``).

Three outcomes, as in Starlette's authentication: an Identity, NotAuthenticated
(with a machine-readable reason), or StoreUnavailable when an API key cannot be
verified because Redis is down and the cache cannot vouch for it. With the
failed-auth limit on, a fourth: TooManyFailedAuth, decided before the Redis lookup.

A canary key verifies like any key and then fails as ``canary``: to its user exactly
an unknown key's 401, after the same Redis lookup an unknown key costs. With the
failed-auth limit on, every refusal passes the limit first, also one the key cache
knows (unknown, canary, revoked, expired): over the limit they all get the same 429,
whatever this instance happens to have cached, so a canary (cached as long as a working
key) cannot be told from an unknown key (cached briefly) by the limit's answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from sidecar.auth.failed_auth import FailedAuthLimiter
from sidecar.auth.jwt_auth import JwtVerifier
from sidecar.core.clientaddr import TrustedProxies
from sidecar.core.domain import AllowedNetworks, VerifiedKey
from sidecar.core.errors import NotAuthenticated, StoreUnavailable, TooManyFailedAuth
from sidecar.core.types import AuthMethod
from sidecar.keys import format as keyformat
from sidecar.keys.cache import KeyCache
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from sidecar.keys.usage import UsageTracker
from sidecar.observability.spans import KEY_LOOKUP, RequestTrace

API_KEY: AuthMethod = "api_key"
JWT: AuthMethod = "jwt"


class Identity(NamedTuple):
    user_id: str
    method: AuthMethod
    key_id: str | None = None
    key_prefix: str | None = None
    environment: str | None = None  # API keys: "live" or "test"
    expires_at: float | None = None  # API keys: epoch seconds the key stops working at
    scopes: tuple[str, ...] | None = None  # API keys: None = unrestricted
    networks: AllowedNetworks | None = None  # API keys: None = from any address


class CanaryUsed(NotAuthenticated):
    """A canary key was used: rendered exactly as any 401; the key it carries is for
    the sidecar's own record of the hit (a ``canary.used`` audit event)."""

    def __init__(self, key: VerifiedKey) -> None:
        super().__init__("canary")
        self.key = key


class Credential(NamedTuple):
    kind: AuthMethod
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
        failed_auth: FailedAuthLimiter | None = None,
        proxies: TrustedProxies | None = None,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._cache = cache
        self._jwt = jwt_verifier
        self._usage = usage
        self._failed = failed_auth
        self._proxies = proxies or TrustedProxies(())
        self.cache_hits = 0
        self.cache_misses = 0
        self.canary_hits = 0

    async def authenticate(
        self,
        credential: Credential,
        *,
        peer: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        key_hash: str | None = None,
        trace: RequestTrace | None = None,
    ) -> Identity:
        """``peer`` and ``headers`` say who the client is, for the failed-auth limit;
        they are only looked at when that limit is on and the cache cannot answer.
        ``key_hash``: the API key's hash, when ``vouched`` already computed it.
        ``trace``: the request's, when tracing is on (a cache miss gets a span)."""
        if credential.kind == JWT:
            return Identity(await self._jwt.user_id(credential.value), JWT)
        if self._failed is None:
            return await self._api_key(credential.value, None, key_hash, trace=trace)
        client = _Client(self._proxies, peer, headers)
        try:
            return await self._api_key(credential.value, client, key_hash, trace=trace)
        except NotAuthenticated:
            self._failed.failed(client.address())
            raise

    async def reverify(self, credential: Credential) -> Identity:
        """What ``credential`` is worth now, for a connection it opened earlier (an open
        WebSocket): NotAuthenticated, or StoreUnavailable when Redis cannot say, and
        never a stale cache entry (the caller bounds how long it waits for Redis). The
        failed-auth limit is not involved: the client passed it when it connected, and
        a failure here is no guess of the client's."""
        if credential.kind == JWT:
            return Identity(await self._jwt.user_id(credential.value), JWT)
        return await self._api_key(credential.value, None, None, stale_ok=False)

    def vouched(self, credential: Credential) -> tuple[VerifiedKey, str] | None:
        """(key, key hash) of an API key the cache vouches for, if it would be admitted
        now; else None. Counts and records nothing: ``authenticate`` decides."""
        if credential.kind != API_KEY:
            return None
        key_hash = self._hasher.hash(credential.value)
        key = self._cache.fresh(key_hash)
        if key is None or key.canary or not key.usable_at(time.time()):
            return None
        return key, key_hash

    def used_from(self, identity: Identity, client: str | None) -> None:
        """The request ``identity`` authenticated came from ``client`` (usage networks)."""
        if identity.key_id is not None:
            self._usage.used_from(identity.key_id, client, time.time())

    def rate_limited(self, identity: Identity) -> None:
        """The request ``identity`` authenticated was refused with 429 (usage counts)."""
        if identity.key_id is not None:
            self._usage.rate_limited(identity.key_id, time.time())

    async def jwt_only(self, credential: Credential) -> str:
        if credential.kind != JWT:
            raise NotAuthenticated("api_key_not_allowed")
        return await self._jwt.user_id(credential.value)

    async def _api_key(
        self,
        value: str,
        client: _Client | None,
        key_hash: str | None,
        stale_ok: bool = True,
        trace: RequestTrace | None = None,
    ) -> Identity:
        if key_hash is None:
            key_hash = self._hasher.hash(value)
        # A cached hash is a key already parsed and verified: shape and checksum are
        # checked on a miss only (they cost more than the hash on the cached path).
        key = self._cache.fresh(key_hash)
        cached = key is not None
        if key is None:
            parsed = keyformat.parse(value)
            if parsed is None:
                raise NotAuthenticated("malformed")
            self.cache_misses += 1
            key = await self._lookup(parsed, key_hash, client, stale_ok, trace)
        else:
            self.cache_hits += 1
        if key.canary:
            self.canary_hits += 1
            reason = "canary"
        else:
            now = time.time()
            if key.usable_at(now):
                self._usage.record(key.id, now)
                return Identity(
                    key.user_id,
                    API_KEY,
                    key.id,
                    key.prefix,
                    key.environment,
                    key.expires_at,
                    key.scopes,
                    key.networks,
                )
            reason = "revoked" if not key.active else "expired"
        if cached and client is not None:  # a lookup passed the limit already
            try:
                self._admit(client, reason)
            except TooManyFailedAuth as exc:
                exc.canary = key if key.canary else None  # still a canary.used event
                raise
        raise CanaryUsed(key) if key.canary else NotAuthenticated(reason)

    def _admit(self, client: _Client, instead_of: str | None = None) -> None:
        """The failed-auth limit, before a lookup or a refusal the cache answers."""
        assert self._failed is not None
        try:
            self._failed.admit(client.address())
        except TooManyFailedAuth as exc:
            exc.instead_of = instead_of
            raise

    async def _lookup(
        self,
        parsed: keyformat.ParsedKey,
        key_hash: str,
        client: _Client | None,
        stale_ok: bool = True,
        trace: RequestTrace | None = None,
    ) -> VerifiedKey:
        if client is not None:
            self._admit(client)
        if self._cache.known_unknown(key_hash):
            raise NotAuthenticated("unknown")
        epoch = self._cache.epoch
        try:
            verify = self._store.verify(parsed, key_hash)
            key = await (verify if trace is None else trace.timed(KEY_LOOKUP, verify))
        except StoreUnavailable:
            stale = self._cache.stale(key_hash) if stale_ok else None
            if stale is not None:
                return stale
            raise
        if key is None:
            self._cache.put_unknown(key_hash, epoch)
            raise NotAuthenticated("unknown")
        key = self._cache.confirmed(key_hash, key)
        self._cache.put(key_hash, key, epoch)
        return key


class _Client:
    """The client's address, worked out (from the peer and X-Forwarded-For) only when
    first needed: a request answered from the cache never needs it."""

    __slots__ = ("_address", "_headers", "_peer", "_proxies", "_resolved")

    def __init__(
        self, proxies: TrustedProxies, peer: str | None, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        self._proxies = proxies
        self._peer = peer
        self._headers = headers
        self._address: str | None = None
        self._resolved = False

    def address(self) -> str | None:
        if not self._resolved:
            self._address = self._proxies.client(self._peer, self._headers)
            self._resolved = True
        return self._address
