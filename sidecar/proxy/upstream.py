"""The upstream hop: the only module that talks to the upstream.

A lean HTTP/1.1 client on ``asyncio.Protocol`` + httptools' response parser
(connection.py), not a general-purpose library, because a general client's per-request
objects cost more CPU than the rest of the sidecar's hop (docs/design-notes.md, "The
upstream client"). What it skips:
URL and header objects (headers stay bytes end to end), cookie jars, redirects,
decompression, per-request timeout objects and tasks for small bodies.

What it keeps: a keep-alive pool bounded by ``upstream.pool_size`` (``Slots`` and a
LIFO idle list, so the warm connections are reused), connect and read timeouts
(refused/unreachable -> 502, timeouts -> 504), https with the system's trust store,
Content-Length or chunked request bodies, response bodies by Content-Length, chunked or
until close, HEAD and 1xx interim responses, flow control both ways. Bodies stream
chunk by chunk; small ones of known size are read whole and sent in one piece. A
connection goes back to the pool only after a complete exchange that keeps it alive;
on any error or when the client goes away it is aborted.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from starlette.types import Receive, Send

from sidecar.config.model import UpstreamConfig
from sidecar.core.bodies import body_chunks, read_body
from sidecar.core.errors import (
    CLIENT_CLOSED,
    ClientGone,
    PayloadTooLarge,
    SidecarError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.core.slots import Slots
from sidecar.core.types import BODY_FOLLOWS, Headers
from sidecar.proxy.connection import (
    LAST_CHUNK,
    PARSE_ERRORS,
    UpstreamConnection,
    chunk,
    request_head,
)
from sidecar.proxy.headers import HeaderRules

# Responses larger than this (or of unknown size) get a task that watches for the
# client going away, so a long download stops pulling from the upstream at once.
_WATCH_DISCONNECT_ABOVE = 1024 * 1024
# An upstream still computing its response head after this long gets the same watch,
# so a slow call whose client left is cut off (as nginx does) instead of running on
# until the read timeout. Later rather than at once: a task per request costs ~10 µs.
_WATCH_SLOW_HEAD_AFTER = 0.5
# Bodies of a known size up to this are read whole and sent in one piece: for the
# many small API calls that saves a chunked encoder upstream and two ASGI sends
# downstream (measured: bench/README.md), and memory stays bounded per request.
_WHOLE_AT_MOST = 64 * 1024
# Idle pooled connections older than this are dropped rather than reused: below the
# 5 s keep-alive timeout of uvicorn and Node, so we rarely race the upstream's close.
_IDLE_SECONDS = 4.0
P = TypeVar("P", bound=asyncio.BaseProtocol)
_FAILURES = (OSError, *PARSE_ERRORS)  # TimeoutError and ssl.SSLError are OSErrors
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENCY_KEYS = frozenset({b"idempotency-key", b"x-idempotency-key"})


@dataclass(slots=True)
class Exchange:
    """One proxied round trip: the headers the sidecar adds to the response, and what
    happened, for the access log and metrics."""

    extra_response_headers: Headers
    status: int = 0
    started: bool = False  # the response head went to the client
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_seconds: float | None = None


class _Outgoing(NamedTuple):
    """One request as it goes upstream: the head (with a small body appended), and how
    the rest of the body, if any, follows."""

    method: str
    head: bytes
    streamed_body: bool  # False: no body, or it is already in ``head``
    chunked: bool
    headers: Headers  # only read to decide whether a failed request may be replayed

    def replayable(self) -> bool:
        """Go net/http's rule: a safe method or an idempotency key, and none of the
        client's body already gone (a body held whole can be sent again as it was)."""
        if self.streamed_body:
            return False
        if self.method in _SAFE_METHODS:
            return True
        return any(name.lower() in _IDEMPOTENCY_KEYS for name, _ in self.headers)


class UpstreamClient:
    def __init__(
        self, settings: UpstreamConfig, max_body_bytes: int, *, idle_seconds: float = _IDLE_SECONDS
    ) -> None:
        url = urlsplit(settings.url)
        secure = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if secure else 80)
        self._host_header = url.netloc.rpartition("@")[2].encode("idna")
        self._prefix = url.path.rstrip("/").encode()
        self._ssl = ssl.create_default_context() if secure else None
        self._settings = settings
        self._connect_timeout = settings.connect_timeout_seconds
        self._read_timeout = settings.read_timeout_seconds
        self._max_body = max_body_bytes
        self._idle_seconds = idle_seconds
        self._idle: list[UpstreamConnection] = []
        self._slots: Slots | None = None

    async def start(self) -> None:
        self._slots = Slots(self._settings.pool_size)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()

    async def connectable(self) -> bool:
        """Whether a connection to the upstream can be opened (for /readyz)."""
        try:
            conn = await self._connect()
        except SidecarError:
            return False
        conn.abort()
        return True

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        return await self.connect(lambda: UpstreamConnection(loop))

    async def connect(self, factory: Callable[[], P]) -> P:
        """A new connection to the upstream speaking ``factory()``'s protocol (also the
        WebSocket relay's, which owns it from then on). 502 or 504 if it cannot."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    factory,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except OSError as exc:
            raise UpstreamUnavailable() from exc
        return protocol

    def request_head(
        self,
        method: str,
        path: bytes,
        query: bytes,
        headers: Headers,
        content_length: int | None = None,
        chunked: bool = False,
    ) -> bytes:
        """The request line and headers for this upstream, framed by the client's
        ``content_length`` or ``chunked``: the ``head`` ``forward`` sends. Raises
        ValueError if a header would smuggle a line break."""
        target = self._prefix + path + (b"?" + query if query else b"")
        length = None if chunked else content_length
        return request_head(method, target, self._host_header, headers, length, chunked)

    @property
    def address(self) -> tuple[str, int]:
        """The upstream's host and port (for a trace's client span)."""
        return self._host, self._port

    @property
    def read_timeout(self) -> float:
        return self._read_timeout

    def _take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        if not idle:
            return None
        oldest = time.monotonic() - self._idle_seconds
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest:
                return conn
            conn.abort()
        return None

    async def forward(
        self,
        *,
        method: str,
        head: bytes,
        headers: Headers,
        content_length: int | None,
        chunked: bool,
        receive: Receive,
        send: Send,
        exchange: Exchange,
    ) -> None:
        """Stream the request (``head`` from ``request_head``, with the same ``headers``
        and framing) upstream and the response back. Raises a SidecarError (413/502/504)
        or ClientGone only while nothing has been sent to the client."""
        assert self._slots is not None, "start() first"
        if content_length is not None and content_length > self._max_body:
            raise PayloadTooLarge(self._max_body)
        if chunked:
            content_length = None
        has_body = chunked or bool(content_length)
        whole = b""
        streamed = has_body
        if has_body and content_length is not None and content_length <= _WHOLE_AT_MOST:
            # Read before taking a connection: a slow client holds no upstream slot.
            whole = await read_body(receive, self._max_body, exchange)
            streamed = False  # sent with the head
        outgoing = _Outgoing(method, head + whole if whole else head, streamed, chunked, headers)
        slots = self._slots
        if not slots.try_take():
            await slots.take()
        try:
            await self._exchange(outgoing, receive, send, exchange)
        finally:
            slots.give()

    async def _exchange(
        self, outgoing: _Outgoing, receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        read_timeout = self._read_timeout
        started = time.perf_counter()
        watch = _DisconnectWatch(receive)
        try:
            conn, sender = await self._request(outgoing, receive, exchange, watch)
        except BaseException:
            watch.stop()
            raise
        exchange.upstream_seconds = time.perf_counter() - started
        exchange.status = conn.status
        try:
            if sender is not None and not sender.done():
                sender.add_done_callback(lambda task: _cut_if_failed(task, conn))
            if conn.complete or (
                conn.content_length is not None and conn.content_length <= _WHOLE_AT_MOST
            ):
                watch.stop()
                await _relay_whole(conn, send, exchange, read_timeout)
            else:
                size = conn.content_length
                if size is None or size > _WATCH_DISCONNECT_ABOVE:
                    watch.start()
                else:
                    watch.stop()
                await _relay_stream(conn, send, exchange, read_timeout)
        except BaseException:
            conn.abort()
            raise
        finally:
            watch.stop()
            body_done = sender is None or (
                sender.done() and not sender.cancelled() and sender.exception() is None
            )
            if sender is not None and not sender.done():
                sender.cancel()  # the upstream answered without reading the whole body
        if body_done and conn.complete and conn.keep_alive and not conn.closed and not conn.cut:
            conn.finish()
            self._idle.append(conn)
        else:
            conn.abort()

    async def _request(
        self, outgoing: _Outgoing, receive: Receive, exchange: Exchange, watch: _DisconnectWatch
    ) -> tuple[UpstreamConnection, asyncio.Task[None] | None]:
        """Send the request (the body in a task if streamed) until the response head
        arrives; the connection it arrived on and the body task, if any. ``watch`` is
        armed to cut the exchange off if the client leaves while the head is slow."""
        read_timeout = self._read_timeout
        sender: asyncio.Task[None] | None = None
        conn = self._take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect()
            conn.begin(head_only=outgoing.method == "HEAD")
            written = False
            try:
                await conn.write(outgoing.head, read_timeout)
                written = True
                if outgoing.streamed_body:
                    sender = asyncio.ensure_future(
                        self._send_body(conn, receive, exchange, outgoing.chunked)
                    )
                    await asyncio.wait((conn.head, sender), return_when=asyncio.FIRST_COMPLETED)
                    if sender.done():
                        sender.result()  # ClientGone, PayloadTooLarge, UpstreamTimeout
                watch.follow(conn, sender)
                await conn.response_head(read_timeout, watch.start, _WATCH_SLOW_HEAD_AFTER)
            except BaseException as exc:
                conn.abort()
                if sender is not None:
                    sender.cancel()
                if conn.cut is not None:
                    raise conn.cut from None  # the client left while we waited
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout() from exc
                if isinstance(exc, _FAILURES):
                    # A pooled connection the upstream had closed: once more on a fresh
                    # one if nothing went out, or if the request is safe to replay. The
                    # upstream may have read it, so a POST is never sent a second time.
                    if reused and not conn.received_any and (not written or outgoing.replayable()):
                        conn, reused = None, False
                        continue
                    raise UpstreamUnavailable() from exc
                raise
            return conn, sender

    async def _send_body(
        self, conn: UpstreamConnection, receive: Receive, exchange: Exchange, chunked: bool
    ) -> None:
        limit = self._max_body
        timeout = self._read_timeout
        try:
            async for data in body_chunks(receive, limit, exchange):
                await conn.write(chunk(data) if chunked else data, timeout)
            if chunked:
                await conn.write(LAST_CHUNK, timeout)
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc  # the upstream stopped taking the body
        except OSError:
            # The upstream closed its side, perhaps after answering early: the response
            # (or its absence) tells what happened. Not reusable: the body is unfinished.
            conn.keep_alive = False


def _cut_if_failed(sender: asyncio.Task[None], conn: UpstreamConnection) -> None:
    """The request body failed (client gone, too large) while the response streams."""
    if sender.cancelled():
        return
    error = sender.exception()
    if error is not None:
        conn.cut = error if isinstance(error, Exception) else None
        conn.abort()


class _DisconnectWatch:
    """At most one task per exchange reading ``receive`` for the client going away
    (``_cut_when_client_leaves``), on the connection it was last told to follow."""

    __slots__ = ("_conn", "_receive", "_sender", "_task")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._conn: UpstreamConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def follow(self, conn: UpstreamConnection, sender: asyncio.Task[None] | None) -> None:
        if conn is not self._conn:
            self.stop()
        self._conn, self._sender = conn, sender

    def start(self) -> None:
        if self._task is None and self._conn is not None:
            self._task = asyncio.ensure_future(
                _cut_when_client_leaves(self._receive, self._sender, self._conn)
            )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def _cut_when_client_leaves(
    receive: Receive, sender: asyncio.Task[None] | None, conn: UpstreamConnection
) -> None:
    if sender is not None:
        # Two concurrent ``receive`` calls would split the body between them.
        await asyncio.wait((sender,))
        if sender.cancelled() or sender.exception() is not None:
            return
    while (await receive())["type"] != "http.disconnect":
        pass
    conn.cut = ClientGone()
    conn.abort()  # wakes the relay loop with an error and frees the upstream connection


async def _relay_whole(
    conn: UpstreamConnection, send: Send, exchange: Exchange, timeout: float
) -> None:
    try:
        content = await conn.read_all(timeout)
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc  # nothing sent yet: a clean 504
    except _FAILURES as exc:
        if conn.cut is not None:
            raise conn.cut from None
        raise UpstreamUnavailable() from exc  # nothing sent yet: a clean 502
    exchange.bytes_out = len(content)
    headers = HeaderRules.downstream_response(conn.headers, exchange.extra_response_headers)
    exchange.started = True
    await send(
        {"type": "http.response.start", "status": conn.status, "headers": headers, BODY_FOLLOWS: 1}
    )
    await send({"type": "http.response.body", "body": content, "more_body": False})


async def _relay_stream(
    conn: UpstreamConnection, send: Send, exchange: Exchange, timeout: float
) -> None:
    headers = HeaderRules.downstream_response(conn.headers, exchange.extra_response_headers)
    exchange.started = True
    await send({"type": "http.response.start", "status": conn.status, "headers": headers})
    try:
        while (data := await conn.next_chunk(timeout)) is not None:
            exchange.bytes_out += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": True})
    except _FAILURES as exc:
        # Headers are gone, so the client sees a cut-off body; record why.
        cut = conn.cut
        if isinstance(cut, ClientGone):
            exchange.status = CLIENT_CLOSED
        elif isinstance(cut, SidecarError):
            exchange.status = cut.status
        elif isinstance(exc, TimeoutError):
            exchange.status = 504  # the upstream stalled mid-body past the read timeout
        else:
            exchange.status = 502
        conn.abort()
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})
