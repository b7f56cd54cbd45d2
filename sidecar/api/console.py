"""The API Keys page (SPEC Part 3): one HTML page and its assets, served from the package.

GET and HEAD of ``console.path``, ``config.json`` and ``assets/<file>`` below it; every
response is built once, at start-up. The page talks only to the JSON API and to the
backend's login with the user's own token: this app reads no credential, holds no
secret, and serves the same bytes to everyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from sidecar.core.domain import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_USAGE_DAYS,
    ENVIRONMENTS,
    KEYS_API_PATH,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
)
from sidecar.core.paths import PrefixMatcher, matched_form

ASSETS_DIR = Path(__file__).with_name("console_assets")
# No inline script or style, no eval, nothing from another origin, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".json": b"application/json",
}
# On every response of the page, assets and errors included.
_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
_HTML = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _reply(status: int, content_type: bytes, body: bytes, *extra: tuple[bytes, bytes]) -> _Reply:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        *_COMMON,
        *extra,
    ]
    return _Reply(status, headers, body)


def _json(status: int, body: Any, *extra: tuple[bytes, bytes]) -> _Reply:
    return _reply(status, _TYPES[".json"], orjson.dumps(body), *extra)


def page_settings(
    *,
    login_url: str,
    refresh_url: str,
    scopes: Sequence[str],
    max_lifetime_days: int,
) -> dict[str, Any]:
    """What the page learns from the sidecar (``config.json``): URLs, the configured scope
    names and the limits the API enforces. Nothing secret."""
    return {
        "login_url": login_url,
        "refresh_url": refresh_url,
        "keys_url": KEYS_API_PATH + "/",
        "scopes": sorted(scopes),
        "environments": list(ENVIRONMENTS),
        "max_description": MAX_DESCRIPTION,
        "max_lifetime_days": max_lifetime_days,
        "default_grace_seconds": DEFAULT_GRACE_SECONDS,
        "max_grace_seconds": MAX_GRACE_SECONDS,
        "default_usage_days": DEFAULT_USAGE_DAYS,
        "max_usage_days": MAX_USAGE_DAYS,
    }


class ConsolePage:
    """The ASGI app answering under ``path`` (a normalised path ending in ``/``); the
    dispatcher sends it every request whose normalised path ``matches``."""

    def __init__(self, path: str, settings: dict[str, Any], assets: Path = ASSETS_DIR) -> None:
        self.path = path
        self._base = matched_form(path)  # lower case, no trailing slash
        self._matcher = PrefixMatcher((path,))
        self._replies: dict[str, _Reply] = {
            "/": _reply(200, _TYPES[".html"], (assets / "index.html").read_bytes(), *_HTML),
            "/config.json": _json(200, settings, (b"cache-control", b"no-store")),
            "": _reply(
                308, b"text/plain; charset=utf-8", b"", (b"location", path.encode("latin-1"))
            ),
        }
        for file in sorted(assets.iterdir()):
            if file.is_file() and file.suffix in _TYPES and file.name != "index.html":
                self._replies["/assets/" + file.name.lower()] = _reply(
                    200, _TYPES[file.suffix], file.read_bytes(), (b"cache-control", b"no-cache")
                )
        self._not_found = _json(404, {"detail": "Not Found"})
        self._not_allowed = _json(405, {"detail": "Method Not Allowed"}, (b"allow", b"GET, HEAD"))

    def matches(self, normalised: str) -> bool:
        return self._matcher.matches(normalised)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request; ``scope["path"]`` is the normalised path."""
        reply = self._replies.get(scope["path"].lower()[len(self._base) :], self._not_found)
        if scope["method"] not in _READ_METHODS:
            reply = self._not_allowed
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
        )
        body = b"" if scope["method"] == "HEAD" else reply.body
        await send({"type": "http.response.body", "body": body})
