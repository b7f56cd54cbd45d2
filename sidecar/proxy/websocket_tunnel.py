"""One relayed WebSocket: the client's connection and the upstream's, their bytes passed
through both ways, and how the pair closes.

Why bytes, not ASGI WebSocket messages: uvicorn would parse every frame, negotiate its
own extensions (permessage-deflate) with the client and we would re-frame each message
for a second connection upstream. Relaying the bytes after the upstream's 101 keeps
the client and the upstream talking to each other (subprotocols, extensions, pings
and close codes untouched) at the cost of a transport write per read, both ways.

The one thing the sidecar says itself is the close (``Tunnel.close_policy``): a close
frame to the client at the next frame boundary from the upstream (frames from the
upstream are tracked by their headers only), a close to the upstream, and both
connections ended; if the upstream sits in the middle of a frame for a second, both are
cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httptools
from starlette.types import Send

from sidecar.core.types import Headers
from sidecar.proxy.headers import HeaderRules
from sidecar.proxy.websocket_frames import POLICY_VIOLATION, Frames, client_close, server_close

_CUT_OFF_AFTER = 1.0  # seconds a pending close may wait for a frame boundary
_MAX_ERROR_BODY = 64 * 1024


class Tunnel:
    """One relayed socket: the client's transport, the upstream's, and why it closes."""

    def __init__(self, client: asyncio.Transport, upstream: UpstreamSide) -> None:
        self.client = client
        self.upstream = upstream
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.code = POLICY_VIOLATION
        self._deadline: asyncio.TimerHandle | None = None
        self._cut: asyncio.TimerHandle | None = None

    def expire_at(self, epoch: float | None) -> None:
        """Close with 1008 at ``epoch`` (seconds since the epoch); None: no deadline."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if epoch is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(max(0.0, epoch - time.time()), self.close_policy)

    def close_policy(self, code: int = POLICY_VIOLATION) -> None:
        """Close both sides with ``code`` (1008: the credential is no longer valid), at
        the next frame boundary from the upstream."""
        if self.closing or self.done.done():
            return
        self.closing = True
        self.code = code
        self.upstream.stop_reading_after_frame()
        if self.upstream.frames.at_boundary:
            self.send_close()
        else:
            self._cut = asyncio.get_running_loop().call_later(_CUT_OFF_AFTER, self.cut)

    def send_close(self) -> None:
        if not self.client.is_closing():
            self.client.write(server_close(self.code))
            self.client.close()  # after the frame is flushed
        self.upstream.close_with(client_close(self.code))
        self.end()

    def end(self) -> None:
        """Either side is gone: close the other once what was relayed to it is sent."""
        for timer in (self._deadline, self._cut):
            if timer is not None:
                timer.cancel()
        if not self.client.is_closing():
            self.client.close()
        self.upstream.close_with(b"")
        if not self.done.done():
            self.done.set_result(None)

    def cut(self) -> None:
        """A pending close found no frame boundary in time: drop both at once."""
        self.client.abort()
        self.upstream.abort()
        self.end()


class ClientSide(asyncio.Protocol):
    """The client's connection once taken over: its bytes go to the upstream as is."""

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if not tunnel.closing:
            tunnel.upstream.write(data)

    def eof_received(self) -> bool | None:
        self._tunnel.end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.end()

    def pause_writing(self) -> None:
        self._tunnel.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._tunnel.upstream.resume_reading()


class UpstreamSide(asyncio.Protocol):
    """The upstream connection: first the handshake answer (parsed), then raw bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        loop = asyncio.get_running_loop()
        self.head: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()  # a refusal's end
        self.status = 0
        self.headers: Headers = []
        self.body = bytearray()
        self.complete = False
        self.upgraded = False
        self.pending = bytearray()  # bytes after the 101, before the tunnel exists
        self.frames = Frames()
        self.tunnel: Tunnel | None = None
        self._stop_after_frame = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._relay(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = self.status == 101
            self._relay(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self._fail(exc or ConnectionResetError("upstream closed the connection"))
        self.complete = True
        if not self.finished.done():
            self.finished.set_result(None)
        if self.tunnel is not None:
            self.tunnel.end()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.pause_reading()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.resume_reading()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head.done():
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status != 101 and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if len(self.body) < _MAX_ERROR_BODY:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.finished.done():
            self.finished.set_result(None)
        if not self.head.done():
            self.head.set_result(None)

    # used by the relay

    def _fail(self, error: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()
        self.abort()

    def _relay(self, data: bytes) -> None:
        if not self.head.done():
            self.head.set_result(None)
        tunnel = self.tunnel
        if tunnel is None:
            self.pending += data
            return
        if self._stop_after_frame:
            upto = self.frames.consume(data, stop_at_boundary=True)
            if upto:
                tunnel.client.write(data[:upto])
            if self.frames.at_boundary:
                tunnel.send_close()
            return
        self.frames.consume(data)
        tunnel.client.write(data)

    def attach(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        pending, self.pending = bytes(self.pending), bytearray()
        if pending:
            self._relay(pending)

    def stop_reading_after_frame(self) -> None:
        self._stop_after_frame = True

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close_with(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if frame:
                self.transport.write(frame)
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def switching_head(upstream_headers: Headers, ours: Headers) -> bytes:
    """The 101 as the upstream sent it (its Upgrade and Connection included), plus our
    response headers (X-Request-ID, rate-limit headers)."""
    names = {name.lower() for name, _ in ours}
    parts = [b"HTTP/1.1 101 Switching Protocols\r\n"]
    for name, value in upstream_headers:
        if name.lower() not in names:
            parts += (name, b": ", value, b"\r\n")
    for name, value in ours:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def relay_refusal(side: UpstreamSide, send: Send, ours: Headers, timeout: float) -> None:
    """The upstream answered the upgrade with an ordinary response: relay it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(side.finished), timeout)
    side.abort()
    headers = HeaderRules.downstream_response(
        [(n, v) for n, v in side.headers if n.lower() != b"content-length"], ours
    )
    await send({"type": "http.response.start", "status": side.status, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(side.body)})
