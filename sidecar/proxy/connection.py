"""One HTTP/1.1 connection to the upstream: an asyncio.Protocol feeding httptools.

Only proxy.py uses this. A connection carries one exchange at a time: ``begin()``
arms a fresh response parser, the response head arrives on ``head``, the body is
pulled with ``next_chunk()``. The head is frozen once complete: trailers and any bytes
after the response (a body longer than its Content-Length, a body on 204/304) never
touch it, and such a connection is not reused. Reading pauses while more than
``_HIGH_WATER`` bytes of body wait to be relayed; writes wait for the transport to
drain. ``abort()`` ends the connection at once and wakes whoever waits on it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import httptools

from sidecar.core.types import NO_BODY_STATUSES, Headers

# Response body bytes held before reading from the upstream pauses (per connection).
_HIGH_WATER = 256 * 1024
# Responses without a body, whatever their headers say (RFC 9110 §6.4.1).
PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
# Status codes a response may carry (RFC 9110 §15); anything else is an invalid response.
_HIGHEST_STATUS = 599


def request_head(
    method: str,
    target: bytes,
    host: bytes,
    headers: Headers,
    content_length: int | None,
    chunked: bool,
) -> bytes:
    """The request line and headers, in the caller's order, framed by ``content_length``
    or ``chunked`` (a Content-Length header the caller passed stays where it was).

    Raises ValueError if a header would smuggle a line break (as aiohttp did): values
    from the client cannot hold one, but identity values come from tokens."""
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    lines = 3  # request line, host, the blank line
    length_given = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            if chunked:
                continue
            length_given = True
        elif lowered == b"transfer-encoding":
            continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
        lines += 1
    elif not length_given:
        if content_length is not None:
            parts.append(b"content-length: %d\r\n" % content_length)
            lines += 1
        elif method in ("POST", "PUT", "PATCH"):
            parts.append(b"content-length: 0\r\n")  # some servers answer 411 without it
            lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise ValueError("line break or NUL in a request header")
    return head


def chunk(data: bytes) -> bytes:
    """One piece of a chunked request body (never empty: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def _settle(future: asyncio.Future[Any] | None, error: BaseException | None = None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # its awaiter may have gone (timeout): don't log it as lost


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._active = False
        # Per exchange (begin()):
        self._parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: Headers = []
        self.content_length: int | None = None
        self.head: asyncio.Future[None] = loop.create_future()
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self._head_done = False
        self.error: BaseException | None = None
        # Why the sidecar cut this exchange off (ClientGone, PayloadTooLarge), if it did.
        self.cut: Exception | None = None
        self._head_only = False
        self._interim = False
        self._close_delimited = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None

    def begin(self, head_only: bool) -> None:
        """Arm the connection for one request/response exchange."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = []
        self.content_length = None
        self.head = self._loop.create_future()
        self.complete = self.keep_alive = self.received_any = self._head_done = False
        self.error = self.cut = None
        self._head_only = head_only
        self._interim = self._close_delimited = False
        self._active = True

    def finish(self) -> None:
        """The exchange is over and the connection goes back to the pool."""
        self._active = False
        self._parser = None
        self.idle_since = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._active and not self.complete:
            if exc is None and self.head.done() and self._close_delimited:
                self.complete = True  # the body ran until the upstream closed
                self.keep_alive = False
                _settle(self._waiter)
                self._waiter = None
            else:
                self._fail(exc or ConnectionResetError("upstream closed the connection"))
        _settle(self._drain, ConnectionResetError("upstream closed the connection"))
        self._drain = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _settle(self._drain)
        self._drain = None

    def data_received(self, data: bytes) -> None:
        if not self._active or self._parser is None:
            self.abort()  # an idle connection must stay silent
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except PARSE_ERRORS as exc:
            self._fail(exc)
            self.abort()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the response: never reuse this connection
            self.keep_alive = False
        if not self._head_done:  # after an interim response
            self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # later ones are trailers, or bytes after the response
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._head_done:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:  # interim (100 Continue, 103 Early Hints): await the final one
            self._interim = True
            return
        if status > _HIGHEST_STATUS:
            raise httptools.HttpParserError(f"invalid status {status}")
        self._head_done = True
        self.status = status
        chunked = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit():
                self.content_length = int(value)
            elif lowered == b"transfer-encoding":
                # Only a final "chunked" frames the body; otherwise it runs until close.
                chunked = value.rpartition(b",")[2].strip().lower() == b"chunked"
        self.keep_alive = parser.should_keep_alive()
        if self._head_only or status in NO_BODY_STATUSES:
            self.complete = True
        elif chunked:
            self.content_length = None
            # A trailer named Content-Length is legal (and ignored); llhttp would refuse it.
            parser.set_dangerous_leniencies(lenient_chunked_length=True)
        elif self.content_length is None:
            self._close_delimited = True
        _settle(self.head)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._read_paused and self.transport:
            self._read_paused = True
            self.transport.pause_reading()
        _settle(self._waiter)
        self._waiter = None

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            return
        assert self._parser is not None
        self.complete = True
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        _settle(self._waiter)
        self._waiter = None

    # used by proxy.py

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        _settle(self.head, error)
        _settle(self._waiter, error)
        self._waiter = None

    async def _wait(self, future: asyncio.Future[None], timeout: float) -> None:
        """Await ``future``, failing it with TimeoutError after ``timeout`` seconds. One
        timer handle, not asyncio.timeout() (docs/design-notes.md says what it cost)."""
        if future.done():
            return future.result()
        timer = self._loop.call_later(timeout, _settle, future, TimeoutError())
        try:
            await future
        finally:
            timer.cancel()

    async def response_head(
        self,
        timeout: float,
        on_slow: Callable[[], None] | None = None,
        slow_after: float = 0.0,
    ) -> None:
        """Wait for the response head, at most ``timeout``; call ``on_slow`` if it has
        not come after ``slow_after`` seconds. One timer either way."""
        head = self.head
        if head.done() or on_slow is None or slow_after >= timeout:
            return await self._wait(head, timeout)
        loop = self._loop
        timer: asyncio.TimerHandle | None = None

        def slow() -> None:
            nonlocal timer
            timer = loop.call_later(timeout - slow_after, _settle, head, TimeoutError())
            on_slow()

        timer = loop.call_later(slow_after, slow)
        try:
            await head
        finally:
            if timer is not None:
                timer.cancel()

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The body bytes received so far (at least one), or None at its end."""
        while not self._chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._waiter = self._loop.create_future()
            await self._wait(self._waiter, timeout)
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def read_all(self, timeout: float) -> bytes:
        parts: list[bytes] = []
        while (data := await self.next_chunk(timeout)) is not None:
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def write(self, data: bytes, timeout: float) -> None:
        """Send bytes; wait (at most ``timeout``) while the upstream is not taking them."""
        if self.closed or self.transport is None:
            raise self.error or ConnectionResetError("upstream connection closed")
        self.transport.write(data)
        if self._write_paused:
            self._drain = self._loop.create_future()
            await self._wait(self._drain, timeout)

    def abort(self, error: BaseException | None = None) -> None:
        self.closed = True
        if self._active and not self.complete:
            self._fail(error or ConnectionAbortedError("upstream connection aborted"))
        _settle(self._drain, ConnectionAbortedError("upstream connection aborted"))
        self._drain = None
        if self.transport is not None:
            self.transport.abort()
