"""WebSocket pass-through: after an authenticated upgrade, relay raw bytes both ways.

Why bytes, not ASGI WebSocket messages: uvicorn would parse every frame, negotiate its
own extensions (permessage-deflate) with the client and we would re-frame each message
for a second connection upstream. Relaying the bytes after the upstream's 101 keeps
the client and the upstream talking to each other (subprotocols, extensions, pings
and close codes untouched) at the cost of a transport write per read, both ways.

The one thing the sidecar says itself is the close: when the key or JWT that opened a
socket stops being valid (revoked, expired, JWT ``exp`` plus leeway) it sends a close
frame with code 1008 to the client at the next frame boundary (frames from the
upstream are tracked by their headers only), a close to the upstream, and ends both
connections; if the upstream sits in the middle of a frame for a second, both are
cut off. A graceful shutdown closes open sockets the same way with 1001. Open sockets
are bounded by ``server.max_websockets`` (beyond: 503).

Revocations reach open sockets through the key cache's eviction callbacks (the
revocation feed, the keys API, secret scanning): an evicted key's sockets are verified
again against Redis and closed if it is no longer usable (a rotated key in its grace
period stays open until its new ``expires_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import jwt
from starlette.types import Send

from sidecar.auth.credentials import API_KEY, JWT, Credential, Identity
from sidecar.core.errors import (
    NotAuthenticated,
    TooManyWebSockets,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.core.types import Headers
from sidecar.keys.hashing import KeyHasher
from sidecar.proxy.headers import HeaderRules
from sidecar.proxy.upstream import UpstreamClient

log = logging.getLogger("sidecar.websocket")

POLICY_VIOLATION = 1008
GOING_AWAY = 1001  # the sidecar shuts down
_CUT_OFF_AFTER = 1.0  # seconds a pending close may wait for a frame boundary
_UPGRADE = ((b"connection", b"Upgrade"), (b"upgrade", b"websocket"))
_MAX_ERROR_BODY = 64 * 1024


def wants_websocket(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


def _close(code: int) -> bytes:
    """A close frame as a server sends it (unmasked): FIN + close opcode, the code."""
    return b"\x88\x02" + code.to_bytes(2, "big")


def _masked_close(code: int) -> bytes:
    """A close frame as a client sends it (masked), for the upstream."""
    mask = os.urandom(4)
    payload = code.to_bytes(2, "big")
    return b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _Frames:
    """Where frame boundaries fall in a byte stream of WebSocket frames."""

    __slots__ = ("_head", "_need")

    def __init__(self) -> None:
        self._need = 0  # payload bytes still to come in the current frame
        self._head = bytearray()  # a frame header received in part

    @property
    def at_boundary(self) -> bool:
        return not self._need and not self._head

    def consume(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Advance over ``data``; with ``stop_at_boundary``, stop at the first frame
        boundary. The number of bytes advanced over."""
        i, n = 0, len(data)
        while i < n:
            if stop_at_boundary and self.at_boundary:
                return i
            if self._need:
                take = min(self._need, n - i)
                self._need -= take
                i += take
                continue
            head = self._head
            head.append(data[i])
            i += 1
            if len(head) < 2:
                continue
            short = head[1] & 0x7F
            extended = 2 if short == 126 else 8 if short == 127 else 0
            size = 2 + extended + (4 if head[1] & 0x80 else 0)
            if len(head) == size:
                self._need = int.from_bytes(head[2 : 2 + extended]) if extended else short
                head.clear()
        return i


class _Tunnel:
    """One relayed socket: the client's transport, the upstream's, and why it closes."""

    def __init__(self, client: asyncio.Transport, upstream: _UpstreamSide) -> None:
        self.client = client
        self.upstream = upstream
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closing = False
        self.code = POLICY_VIOLATION
        self.key_hash: str | None = None
        self.credential: Credential | None = None
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
            self.client.write(_close(self.code))
            self.client.close()  # after the frame is flushed
        self.upstream.close_with(_masked_close(self.code))
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


class _ClientSide(asyncio.Protocol):
    """The client's connection once taken over: its bytes go to the upstream as is."""

    def __init__(self, tunnel: _Tunnel) -> None:
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


class _UpstreamSide(asyncio.Protocol):
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
        self.frames = _Frames()
        self.tunnel: _Tunnel | None = None
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

    def attach(self, tunnel: _Tunnel) -> None:
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


TakeOver = Callable[[Callable[[], None]], tuple[asyncio.Transport, bytes, Callable[[], None]]]
Authenticate = Callable[[Credential], Awaitable[Identity]]


class WebSockets:
    """The open relayed sockets, bounded, and what closes them."""

    def __init__(
        self,
        *,
        limit: int,
        hasher: KeyHasher,
        authenticate: Authenticate,
        jwt_leeway: float,
    ) -> None:
        self._limit = limit
        self._hasher = hasher
        self._authenticate = authenticate
        self._leeway = jwt_leeway
        self._open: set[_Tunnel] = set()
        self._opening = 0
        self._by_key: dict[str, set[_Tunnel]] = {}
        self._checks: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._open)

    async def relay(
        self,
        *,
        upstream: UpstreamClient,
        take_over: TakeOver,
        send: Send,
        path: bytes,
        query: bytes,
        headers: Headers,
        response_headers: Headers,
        identity: Identity | None,
        credential: Credential | None,
    ) -> int:
        """Open the upstream socket and relay until either side closes. The status the
        client got (101, or the upstream's refusal). Raises a SidecarError (503 over
        the limit, 502/504 upstream) only while nothing was sent."""
        if len(self._open) + self._opening >= self._limit:
            raise TooManyWebSockets()
        self._opening += 1
        try:
            side = await upstream.connect(_UpstreamSide)
            try:
                side.write(upstream.request_head("GET", path, query, [*headers, *_UPGRADE]))
                async with asyncio.timeout(upstream.read_timeout):
                    await side.head
            except TimeoutError as exc:
                side.abort()
                raise UpstreamTimeout() from exc
            except (OSError, httptools.HttpParserError) as exc:
                side.abort()
                raise UpstreamUnavailable() from exc
        finally:
            self._opening -= 1
        if not side.upgraded:
            await _refused(side, send, response_headers, upstream.read_timeout)
            return side.status
        holder: list[_Tunnel] = []
        client, early, release = take_over(lambda: holder[0].close_policy(GOING_AWAY))
        client.write(_head(side.headers, response_headers))
        tunnel = _Tunnel(client, side)
        holder.append(tunnel)
        client.set_protocol(_ClientSide(tunnel))
        side.attach(tunnel)
        if early:
            side.write(early)
        client.resume_reading()
        self._track(tunnel, identity, credential)
        try:
            await tunnel.done
        finally:
            tunnel.end()
            self._untrack(tunnel)
            release()
        return 101

    def _track(
        self, tunnel: _Tunnel, identity: Identity | None, credential: Credential | None
    ) -> None:
        self._open.add(tunnel)
        if identity is None or credential is None:
            return  # a public path: nothing to revoke
        tunnel.credential = credential
        if identity.method == API_KEY:
            tunnel.key_hash = self._hasher.hash(credential.value)
            self._by_key.setdefault(tunnel.key_hash, set()).add(tunnel)
            tunnel.expire_at(identity.expires_at)
        elif identity.method == JWT:
            tunnel.expire_at(self._jwt_deadline(credential.value))

    def _untrack(self, tunnel: _Tunnel) -> None:
        self._open.discard(tunnel)
        if tunnel.key_hash is not None:
            sockets = self._by_key.get(tunnel.key_hash)
            if sockets is not None:
                sockets.discard(tunnel)
                if not sockets:
                    del self._by_key[tunnel.key_hash]

    def _jwt_deadline(self, token: str) -> float | None:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        exp = claims.get("exp")
        return float(exp) + self._leeway if isinstance(exp, int | float) else None

    def evicted(self, key_hash: str | None) -> None:
        """The key cache dropped ``key_hash`` (None: everything): verify its sockets
        again; those whose key no longer works are closed with 1008."""
        if key_hash is None:
            tunnels = [t for ts in self._by_key.values() for t in ts]
        else:
            tunnels = list(self._by_key.get(key_hash, ()))
        for tunnel in tunnels:
            check = asyncio.ensure_future(self._verify_again(tunnel))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)

    async def _verify_again(self, tunnel: _Tunnel) -> None:
        assert tunnel.credential is not None
        try:
            identity = await self._authenticate(tunnel.credential)
        except NotAuthenticated:
            tunnel.close_policy()
            return
        except Exception:  # Redis down: the socket stays; the next eviction tries again
            log.warning("could not verify an open WebSocket's key again", exc_info=True)
            return
        tunnel.expire_at(identity.expires_at)

    def close_all(self) -> None:
        for tunnel in list(self._open):
            with contextlib.suppress(Exception):
                tunnel.close_policy(GOING_AWAY)


def _head(upstream_headers: Headers, ours: Headers) -> bytes:
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


async def _refused(side: _UpstreamSide, send: Send, ours: Headers, timeout: float) -> None:
    """The upstream answered the upgrade with an ordinary response: relay it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(side.finished), timeout)
    side.abort()
    headers = HeaderRules.downstream_response(
        [(n, v) for n, v in side.headers if n.lower() != b"content-length"], ours
    )
    await send({"type": "http.response.start", "status": side.status, "headers": headers})
    await send({"type": "http.response.body", "body": bytes(side.body)})
