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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from sidecar.config import UpstreamConfig
from sidecar.errors import PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from sidecar.headers import HeaderRules, Headers

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Responses larger than this (or of unknown size) get a task that watches for the
# client going away, so a long download stops pulling from the upstream at once.
_WATCH_DISCONNECT_ABOVE = 1024 * 1024


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


@dataclass(slots=True)
class Exchange:
    """What one proxied round trip did, for the access log and metrics."""

    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float = 0.0
    extra_response_headers: Headers = field(default_factory=list)


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
        (413/502/504) only while nothing has been sent to the client yet."""
        assert self._session is not None, "start() first"
        if content_length is not None and content_length > self._max_body:
            raise PayloadTooLarge(self._max_body)
        target = self._base + path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        has_body = chunked or (content_length is not None and content_length > 0)
        body = self._request_body(receive, exchange) if has_body else None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            response = await self._session.request(
                method,
                URL(target, encoded=True),
                headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except PayloadTooLarge:
            raise
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, PayloadTooLarge):
                raise exc.__cause__ from None
            raise UpstreamUnavailable() from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout() from exc
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, PayloadTooLarge) or _caused_by_limit(exc):
                raise PayloadTooLarge(self._max_body) from exc
            raise UpstreamUnavailable() from exc
        try:
            exchange.upstream_seconds = loop.time() - started
            exchange.status = response.status
            await self._relay(response, receive, send, exchange)
        finally:
            response.release()
            response.close()

    async def _request_body(self, receive: Receive, exchange: Exchange) -> AsyncIterator[bytes]:
        limit = self._max_body
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                exchange.bytes_in += len(chunk)
                if exchange.bytes_in > limit:
                    raise PayloadTooLarge(limit)
                yield chunk
            if not message.get("more_body", False):
                return

    async def _relay(
        self, response: aiohttp.ClientResponse, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        raw = [(k, v) for k, v in response.raw_headers]
        headers = HeaderRules.downstream_response(raw)
        headers.extend(exchange.extra_response_headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        size = response.content_length
        watcher: asyncio.Task[None] | None = None
        if size is None or size > _WATCH_DISCONNECT_ABOVE:
            watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            async for chunk in response.content.iter_any():
                if watcher is not None and watcher.done():
                    return  # client gone: stop pulling; the caller closes the response
                exchange.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError):
            # The upstream broke mid-body; headers are gone, so the client sees a cut-off body.
            exchange.status = 502
        finally:
            if watcher is not None:
                watcher.cancel()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _caused_by_limit(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PayloadTooLarge):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
