"""The request-target as the public listener reads it, for every listener that decides.

httptools' URL parser (the one uvicorn runs on a request line), then the path
percent-decoded as uvicorn decodes it. The public listener (server/protocol.py) reads
its request line with ``parse_target``, and the forward-auth listener reads the target
a front proxy names in a header with it too: a decision is made on the same path, and
refused as ambiguous in the same cases, as when the sidecar proxies the request itself
(``//evil/x`` is a path here, never a host: ``urlsplit`` would read ``evil`` as one).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote

import httptools


class InvalidTarget(ValueError):
    """Not a request-target an HTTP/1.1 request line could carry."""


class Target(NamedTuple):
    raw_path: bytes  # as sent: ASGI ``scope["raw_path"]``
    path: str  # percent-decoded: ``scope["path"]``
    query: bytes  # without the "?": ``scope["query_string"]``


def parse_target(target: bytes) -> Target:
    """Origin form (``/p?q``) or absolute form (``http://h/p?q``); a fragment is dropped.
    Raises InvalidTarget for what the request-line parser would refuse."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError as exc:
        raise InvalidTarget(target[:100]) from exc
    raw_path = url.path or b"/"  # absolute form without a path: http://h
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError as exc:  # the parser passes no raw non-ASCII byte; be sure
        raise InvalidTarget(target[:100]) from exc
    if "%" in path:
        path = unquote(path)
    return Target(raw_path, path, url.query or b"")
