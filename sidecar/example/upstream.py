"""A stand-in for the CallCov backend: answers every request with what it received.

Used by the README walkthrough (``serve --example-upstream``), docker-compose and
the benchmark. It streams the request body through a hash, so any size works.

With the signed identity assertion on, ``serve --example-upstream`` runs it behind
``verifying``: a request that claims an identity must carry a valid assertion for its
own method and path, else 401; the claims are echoed under ``assertion``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jwt
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.core.paths import normalise


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    claims = scope.get("state", {}).get("assertion")
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    body = orjson.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body_sha256": digest.hexdigest(),
            "body_bytes": size,
            "identity": {
                "user_id": headers.get("x-callcov-user-id"),
                "auth_method": headers.get("x-callcov-auth-method"),
                "key_id": headers.get("x-callcov-key-id"),
            },
            "assertion": claims,
        },
        option=orjson.OPT_INDENT_2,
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def verifying(
    app: ASGIApp, *, jwks: dict[str, Any], issuer: str, audience: str, header: str
) -> ASGIApp:
    """``app`` behind the check an upstream makes on the identity assertion."""
    keys = jwt.PyJWKSet.from_dict(jwks)
    wanted = header.lower().encode()

    def verify(token: str, method: str, path: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token).get("kid")
        key = next(k for k in keys.keys if k.key_id == kid)  # StopIteration: unknown kid
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=["EdDSA", "ES256"], audience=audience, issuer=issuer,
            options={"require": ["exp", "iat", "sub", "htm", "htu"]},
        )  # fmt: skip
        if claims["htm"] != method or claims["htu"] != normalise(path):
            raise jwt.InvalidTokenError("issued for another route")
        return claims

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = dict(scope["headers"])
            token = found.get(wanted)
            claims = None
            if token is not None or b"x-callcov-user-id" in found:
                try:
                    claims = verify((token or b"").decode(), scope["method"], scope["path"])
                except (jwt.InvalidTokenError, StopIteration, UnicodeDecodeError):
                    body = b'{"detail":"invalid identity assertion"}'
                    await send({"type": "http.response.start", "status": 401, "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ]})  # fmt: skip
                    await send({"type": "http.response.body", "body": body})
                    return
            scope = {**scope, "state": {**scope.get("state", {}), "assertion": claims}}
        await app(scope, receive, send)

    return checked
