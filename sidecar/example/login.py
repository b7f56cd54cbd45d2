"""The example backend's sign-in for one demo user (``example_upstream`` in the config),
so the API Keys page works with ``serve --example-upstream``.

``POST /api/v1/auth/login`` takes ``{"email", "password"}`` and ``POST
/api/v1/auth/refresh`` takes ``{"refresh_token"}``; both answer ``{"access_token",
"refresh_token", "token_type": "bearer"}``. The access token is a JWT the sidecar
accepts (signed with ``auth.jwt.secret``); the refresh token is signed with a key
derived from it, so the sidecar never accepts a refresh token as an access token.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import jwt
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.auth.jwt_auth import mint
from sidecar.config.model import ExampleUpstreamConfig, JwtConfig
from sidecar.core.bodies import read_body
from sidecar.core.errors import ClientGone, PayloadTooLarge

LOGIN_PATH = "/api/v1/auth/login"
REFRESH_PATH = "/api/v1/auth/refresh"
REFRESH_SECONDS = 8 * 3600
_MAX_BODY = 16 * 1024


class DemoLogin:
    """Answers login and refresh for the demo user; passes every other request on."""

    def __init__(self, app: ASGIApp, demo: ExampleUpstreamConfig, jwt_settings: JwtConfig):
        assert demo.demo_email is not None and demo.demo_password is not None
        assert jwt_settings.secret is not None, "needs an HS* auth.jwt.secret"
        self._app = app
        self._email = demo.demo_email.lower().encode()
        self._password = demo.demo_password.get_secret_value().encode()
        self._user_id = demo.demo_user_id
        self._access_seconds = demo.demo_token_seconds
        self._jwt = jwt_settings
        self._refresh_key = hmac.new(
            jwt_settings.secret.get_secret_value().encode(), b"example refresh tokens", "sha256"
        ).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or path not in (LOGIN_PATH, REFRESH_PATH):
            await self._app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"detail": "Method Not Allowed"})
            return
        body = await _body(receive)
        if not isinstance(body, dict):
            await _answer(send, 422, {"detail": "expected a JSON object"})
            return
        user = self._login(body) if path == LOGIN_PATH else self._refreshed(body)
        if user is None:
            await _answer(send, 401, {"detail": "Incorrect email or password"})
            return
        await _answer(send, 200, self._tokens(user))

    def _login(self, body: dict[str, Any]) -> str | None:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            return None
        same_email = hmac.compare_digest(email.strip().lower().encode(), self._email)
        same_password = hmac.compare_digest(password.encode(), self._password)
        return self._user_id if same_email and same_password else None

    def _refreshed(self, body: dict[str, Any]) -> str | None:
        token = body.get("refresh_token")
        if not isinstance(token, str):
            return None
        try:
            claims = jwt.decode(token, self._refresh_key, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        subject = claims.get("sub")
        return subject if claims.get("typ") == "refresh" and subject == self._user_id else None

    def _tokens(self, user: str) -> dict[str, str]:
        now = int(time.time())
        refresh = {"sub": user, "typ": "refresh", "iat": now, "exp": now + REFRESH_SECONDS}
        return {
            "access_token": mint(self._jwt, user, ttl_seconds=self._access_seconds),
            "refresh_token": jwt.encode(refresh, self._refresh_key, algorithm="HS256"),
            "token_type": "bearer",
        }


async def _body(receive: Receive) -> Any:
    try:
        return orjson.loads(await read_body(receive, _MAX_BODY))
    except (ClientGone, PayloadTooLarge, orjson.JSONDecodeError):
        return None


async def _answer(send: Send, status: int, body: Any) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(payload)),
        (b"cache-control", b"no-store"),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


def demo_login_problem(demo: ExampleUpstreamConfig, jwt_settings: JwtConfig) -> str | None:
    """Why the demo login cannot run with this config, or None when it can."""
    if demo.demo_email is None or demo.demo_password is None:
        return "example_upstream.demo_email and demo_password are not set"
    if jwt_settings.secret is None or not any(a.startswith("HS") for a in jwt_settings.algorithms):
        return "the demo login signs tokens with auth.jwt.secret: it needs an HS* algorithm"
    return None
