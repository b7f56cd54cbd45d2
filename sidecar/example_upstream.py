"""A stand-in for the CallCov backend: answers every request with what it received.

Used by the README walkthrough (``serve --example-upstream``), docker-compose and
the benchmark. It streams the request body through a hash, so any size works.
"""

from __future__ import annotations

import hashlib

import orjson
from starlette.types import Receive, Scope, Send


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
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
