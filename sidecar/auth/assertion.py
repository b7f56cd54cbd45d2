"""The signed identity assertion: a JWS the upstream can verify, bound to the route.

Claims: ``iss``, ``aud``, ``sub`` (user id), ``iat``, ``exp``, ``auth_method``,
``key_id`` and ``environment`` (API keys only), ``scope`` (scoped keys only), ``htm`` +
``htu`` (method and normalised path), so a captured assertion cannot be replayed
against another route.

Signing costs tens of microseconds, about the price of a whole proxied request's
Python work, so one signature is reused for the same identity, method and path for
``ttl_seconds // 6`` seconds (at least 1): the token sent has at least five sixths of
its lifetime left, and a busy route costs one signature per window, not per request.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from sidecar.auth.credentials import Identity
from sidecar.config.model import AssertionConfig
from sidecar.crypto.signing_keys import jwk, load_private, load_public, thumbprint

_CACHE_MAX = 10_000


def public_jwks(config: AssertionConfig) -> dict[str, list[dict[str, str]]]:
    """The JWKS served on the admin listener: the current key (kid: ``key_id`` or its
    thumbprint), then every previous key (kid: its thumbprint)."""
    assert config.private_key_file is not None  # config validation requires it
    current = load_private(config.private_key_file, config.algorithm).public_key()
    previous = [load_public(path) for path in config.previous_public_key_files]
    return {
        "keys": [
            jwk(current, config.key_id or thumbprint(current)),
            *(jwk(key, thumbprint(key)) for key in previous),
        ]
    }


class AssertionSigner:
    def __init__(self, config: AssertionConfig) -> None:
        assert config.private_key_file is not None  # config validation requires it
        self._key = load_private(config.private_key_file, config.algorithm)
        self.key_id = config.key_id or thumbprint(self._key.public_key())
        self.header = config.header.encode().lower()
        self._algorithm = config.algorithm
        self._issuer = config.issuer
        self._audience = config.audience
        self._ttl = config.ttl_seconds
        self._reuse = max(1, config.ttl_seconds // 6)
        self._cache: dict[tuple[Any, ...], tuple[int, bytes]] = {}

    def sign(self, identity: Identity, method: str, path: str, scope: str | None = None) -> bytes:
        """``scope``: a scoped key's scopes, space-separated (the claim ``scope``)."""
        now = int(time.time())
        cache_key = (identity, method, path)
        cached = self._cache.get(cache_key)
        if cached is not None and now < cached[0]:
            return cached[1]
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": identity.user_id,
            "iat": now,
            "exp": now + self._ttl,
            "auth_method": identity.method,
            "htm": method,
            "htu": path,
        }
        if identity.key_id is not None:
            claims["key_id"] = identity.key_id
            claims["environment"] = identity.environment or "live"
        if scope is not None:
            claims["scope"] = scope
        token = jwt.encode(
            claims, self._key, algorithm=self._algorithm, headers={"kid": self.key_id}
        ).encode("ascii")
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[cache_key] = (now + self._reuse, token)
        return token
