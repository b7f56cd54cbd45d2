"""The upstream hop: the only module that talks to the upstream.

One aiohttp ClientSession, created at start-up, with explicit pool limits and
timeouts. aiohttp rather than httpx here because httpx's connection pool is the
measured bottleneck of a Python proxy (README, "Design notes"). Bodies stream both
ways chunk by chunk; the upstream response is always released, also when the
client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from sidecar.config import UpstreamConfig
from sidecar.errors import PayloadTooLarge, SidecarError, UpstreamTimeout, UpstreamUnavailable
from sidecar.headers import HeaderRules, Headers

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Responses larger than this (or of unknown size) get a task that watches for the
# client going away, so a long download stops pulling from the upstream at once.
_WATCH_DISCONNECT_ABOVE = 1024 * 1024
# Bodies of a known size up to this are read whole and sent in one piece: for the
# many small API calls that saves a chunked encoder upstream and two ASGI sends
# downstream (measured: bench/README.md), and memory stays bounded per request.
_WHOLE_AT_MOST = 64 * 1024
CLIENT_CLOSED = 499  # status recorded when the client went away mid-response (as nginx)


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


@dataclass(slots=True)
class Exchange:
    """What one proxied round trip did, for the access log and metrics."""

    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float | None = None
    extra_response_headers: Headers = field(default_factory=list)


class _RequestBody:
    """The client's body as an async iterator for aiohttp, counted and capped.

    ``finished`` tells the disconnect watcher when it may call ``receive`` itself:
    two concurrent ``receive`` calls would split the body between them.
    """

    __slots__ = ("_exchange", "_limit", "_receive", "finished")

    def __init__(self, receive: Receive, limit: int, exchange: Exchange) -> None:
        self._receive = receive
        self._limit = limit
        self._exchange = exchange
        self.finished = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                if chunk:
                    exchange.bytes_in += len(chunk)
                    if exchange.bytes_in > self._limit:
                        raise PayloadTooLarge(self._limit)
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            self.finished.set()

    async def whole(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])


class UpstreamClient:
    def __init__(self, settings: UpstreamConfig, max_body_bytes: int) -> None:
        self._base = settings.url.rstrip("/")
        self._settings = settings
        self._max_body = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.pool_size, limit_per_host=0, ttl_dns_cache=60
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._settings.connect_timeout_seconds,
            sock_read=self._settings.read_timeout_seconds,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def connectable(self) -> bool:
        """Whether a TCP connection to the upstream can be opened (for /readyz)."""
        url = URL(self._base)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(url.host, url.port), self._settings.connect_timeout_seconds
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def forward(
        self,
        *,
        method: str,
        path: bytes,
        query: bytes,
        headers: Headers,
        content_length: int | None,
        chunked: bool,
        receive: Receive,
        send: Send,
        exchange: Exchange,
    ) -> None:
        """Stream the request upstream and the response back. Raises a SidecarError
        (413/502/504) or ClientGone only while nothing has been sent to the client."""
        assert self._session is not None, "start() first"
        if content_length is not None and content_length > self._max_body:
            raise PayloadTooLarge(self._max_body)
        target = self._base + path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        body = None
        data: bytes | AsyncIterator[bytes] | None = None
        if chunked or (content_length is not None and content_length > 0):
            body = _RequestBody(receive, self._max_body, exchange)
            small = not chunked and content_length is not None and content_length <= _WHOLE_AT_MOST
            data = await body.whole() if small else body.chunks()
        started = time.perf_counter()
        try:
            response = await self._session.request(
                method,
                URL(target, encoded=True),
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                data=data,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except (SidecarError, ClientGone):
            raise
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            cause = _own_cause(exc)
            if cause is not None:
                raise cause from None
            raise (
                UpstreamTimeout() if isinstance(exc, TimeoutError) else UpstreamUnavailable()
            ) from exc
        try:
            exchange.upstream_seconds = time.perf_counter() - started
            exchange.status = response.status
            await _relay(response, body, receive, send, exchange)
        finally:
            response.release()  # closes the connection instead if the body was not read


async def _relay(
    response: aiohttp.ClientResponse,
    body: _RequestBody | None,
    receive: Receive,
    send: Send,
    exchange: Exchange,
) -> None:
    headers = HeaderRules.downstream_response(response.raw_headers, exchange.extra_response_headers)
    size = response.content_length
    if size is not None and size <= _WHOLE_AT_MOST:
        try:
            content = await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable() from exc  # nothing sent yet: a clean 502
        exchange.bytes_out = len(content)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    watcher: asyncio.Task[None] | None = None
    if size is None or size > _WATCH_DISCONNECT_ABOVE:
        watcher = asyncio.ensure_future(
            _close_when_client_leaves(receive, body, response, exchange)
        )
    try:
        async for chunk in response.content.iter_any():
            exchange.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (aiohttp.ClientError, OSError):
        # Headers are gone, so the client sees a cut-off body; record why.
        if exchange.status != CLIENT_CLOSED:
            exchange.status = 502
    finally:
        if watcher is not None:
            watcher.cancel()


async def _close_when_client_leaves(
    receive: Receive,
    body: _RequestBody | None,
    response: aiohttp.ClientResponse,
    exchange: Exchange,
) -> None:
    if body is not None:
        await body.finished.wait()
    while (await receive())["type"] != "http.disconnect":
        pass
    exchange.status = CLIENT_CLOSED
    response.close()  # wakes the relay loop with an error and frees the upstream connection


def _own_cause(exc: BaseException) -> SidecarError | ClientGone | None:
    """aiohttp wraps a failure of the body iterator (413, client gone); unwrap it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (SidecarError, ClientGone)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
