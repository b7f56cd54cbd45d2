"""JWT verification (PyJWT) with an explicit algorithm allow-list, and dev-token minting.

The token's ``alg`` is checked against the allow-list before any key is chosen;
``none`` is never allowed and HS*/asymmetric families are never mixed (config
validation enforces that), so algorithm confusion cannot happen.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import jwt.types

from sidecar.config.model import HMAC_ALGORITHMS, JwtConfig
from sidecar.core.domain import valid_user_id
from sidecar.core.errors import NotAuthenticated
from sidecar.keys.format import looks_like_api_key

_REMEMBER_SECONDS = 60.0
_REMEMBER_AT_MOST = 10_000


class JwtVerifier:
    def __init__(self, settings: JwtConfig) -> None:
        self._algorithms = list(settings.algorithms)
        self._allowed = frozenset(settings.algorithms)
        self._claim = settings.user_id_claim
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway = settings.leeway_seconds
        self._static_key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        if self._allowed & HMAC_ALGORITHMS:
            assert settings.secret is not None, "validated by config"
            self._static_key = settings.secret.get_secret_value().encode()
        elif settings.public_key_file:
            self._static_key = Path(settings.public_key_file).read_bytes()
        elif settings.jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300)
        self._options: jwt.types.Options = {
            "require": ["exp"],
            "verify_aud": bool(settings.audience),
        }
        # Verified tokens, until min(exp, now + _REMEMBER_SECONDS): a token is immutable,
        # so re-verifying it on every request only repeats the same answer.
        self._verified: dict[str, tuple[str, float]] = {}

    async def user_id(self, token: str) -> str:
        """The verified token's user id; raise NotAuthenticated("jwt_invalid") otherwise."""
        remembered = self._verified.get(token)
        if remembered is not None:
            if time.time() < remembered[1]:
                return remembered[0]
            del self._verified[token]
        if looks_like_api_key(token):
            raise NotAuthenticated("jwt_invalid")
        user_id, expires = await self._verify(token)
        if len(self._verified) >= _REMEMBER_AT_MOST:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (user_id, min(expires, time.time() + _REMEMBER_SECONDS))
        return user_id

    async def _verify(self, token: str) -> tuple[str, float]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in self._allowed:
                raise NotAuthenticated("jwt_invalid")
            key = self._static_key
            if self._jwks is not None:
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,
            )
        except (jwt.PyJWTError, ValueError) as exc:
            raise NotAuthenticated("jwt_invalid") from exc
        subject = claims.get(self._claim)
        if not isinstance(subject, (str, int)) or isinstance(subject, bool):
            raise NotAuthenticated("jwt_invalid")
        user_id = str(subject)
        if not valid_user_id(user_id):  # it becomes a header value and a Redis key part
            raise NotAuthenticated("jwt_invalid")
        return user_id, float(claims["exp"]) + self._leeway


def mint(settings: JwtConfig, subject: str, ttl_seconds: int = 1800) -> str:
    """A development token signed with the configured HS* secret."""
    algorithm = next((a for a in settings.algorithms if a in HMAC_ALGORITHMS), None)
    if algorithm is None or settings.secret is None:
        raise ValueError("minting needs an HS* algorithm and auth.jwt.secret in the config")
    now = int(time.time())
    claims: dict[str, Any] = {settings.user_id_claim: subject, "iat": now, "exp": now + ttl_seconds}
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    return jwt.encode(claims, settings.secret.get_secret_value(), algorithm=algorithm)
