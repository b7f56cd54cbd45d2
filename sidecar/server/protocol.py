"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol, hardened.

What it changes, and why here (the ASGI app never sees an unfinished head):
- Request limits (``server.limits``) are enforced while the head arrives, before any
  app code runs: a request-target over the limit gets 414, a header line, the headers'
  total size or their number over the limit 431. Bytes of a head that never completes
  are counted as they come, so a flood of unfinished headers holds at most one budget
  per connection (uvicorn/httptools would buffer them without bound).
- Read timeouts (``server.client_header_timeout_seconds``, ``..._body_...``,
  ``server.keepalive_timeout_seconds``): read_timeouts.py, shared with the other listeners.
- Request trailers never join the headers (uvicorn appends them to ``scope["headers"]``,
  where an ``X-API-Key`` trailer would authenticate).
- Responses: a 204/304 carrying Content-Length is relayed without a body instead of
  failing; an HTTP/1.0 client gets a body of unknown length delimited by the close, not
  chunked framing it cannot read.
- A response start flagged ``BODY_FOLLOWS`` (its whole body is the next message) is
  framed here and written together with that body: one write and one TCP segment
  instead of two, and one check of the head instead of uvicorn's per-header regular
  expressions (docs/design-notes.md, "Slots and the protocol's one write").
- A request without a Host header (HTTP/1.1) or with more than one gets 400, as nginx
  answers it: which host it is for would be ambiguous to the upstream.
- ``head_hook`` (when set) is called with each request's scope as soon as its head is
  parsed, before the app task runs: the app starts work that waits on another server
  there (app.py: the rate-limit check), a loop iteration and the app's own set-up sooner.
- The request-target is read by ``parse_target`` (proxy/target.py), the function the
  forward-auth listener reads the target a front proxy names with.
- ``Upgrade`` requests run the app as ordinary HTTP (uvicorn's own WebSocket handling
  is off); ``scope["extensions"]["sidecar.take_over"]`` hands the raw connection to the
  app (websocket.py relays its bytes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from sidecar.config.model import RequestLimits
from sidecar.core.errors import (
    HeadersTooLarge,
    HostInvalid,
    MalformedRequest,
    SidecarError,
    TargetTooLong,
)
from sidecar.core.types import BODY_FOLLOWS, NO_BODY_STATUSES, TAKE_OVER
from sidecar.proxy.target import parse_target
from sidecar.server.read_timeouts import BODY, BUSY, HEAD, IDLE, ReadTimeouts, TimedHttpProtocol

log = logging.getLogger("sidecar")
HeadHook = Callable[[dict[str, Any]], None]
# Per header line: ": " and CRLF, which the parser does not pass on.
_LINE_OVERHEAD = 4


class SidecarHttpProtocol(TimedHttpProtocol):
    limits: ClassVar[RequestLimits] = RequestLimits()
    head_hook: ClassVar[HeadHook | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.limits
        self._line_limit = limits.header_line_bytes
        self._total_limit = limits.header_bytes
        self._count_limit = limits.headers
        self._target_limit = limits.target_bytes
        # Bytes an unfinished head may take, all framing included.
        self._head_budget = (
            limits.target_bytes + limits.header_bytes + _LINE_OVERHEAD * limits.headers + 1024
        )
        self._in_head = False
        self._head_seen = 0
        self._header_count = 0
        self._header_bytes = 0
        self._hosts = 0
        self._refusal: SidecarError | None = None
        self._upgrade_bytes: bytearray | None = None
        self._on_shutdown: Callable[[], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self._upgrade_bytes is not None:  # the upgraded connection's first bytes
            self._upgrade_bytes += data
            return
        if self._phase:  # TimedHttpProtocol.data_received's lines, inlined
            now = self._last_read = self.loop.time()
            if self._phase == IDLE:
                self._phase = HEAD
                self._since = now
                if now + self._header_timeout < self._timer_at:
                    self._arm(now + self._header_timeout)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_bytes = bytearray(data[exc.args[0] :] if exc.args else b"")
            self.flow.pause_reading()  # until the app takes the connection over
            return
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            self._refuse(MalformedRequest())
            return
        if self._in_head:
            self._head_seen += len(data)
            if self._head_seen > self._head_budget:
                self._refuse(TargetTooLong() if not self._header_count else HeadersTooLarge())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_seen = self._header_count = self._header_bytes = self._hosts = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self._target_limit:
            self._refusal = TargetTooLong()
            raise self._refusal
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: never a header (it must not authenticate)
        size = len(name) + len(value)
        self._header_count += 1
        self._header_bytes += size
        if (
            size > self._line_limit
            or self._header_bytes > self._total_limit
            or self._header_count > self._count_limit
        ):
            self._refusal = HeadersTooLarge()
            raise self._refusal
        # uvicorn's on_header, inlined: this runs for every header of every request.
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        http_version = parser.get_http_version()
        hosts = self._hosts
        if hosts != 1 and (hosts or http_version != "1.0"):
            self._refusal = HostInvalid(hosts)
            raise self._refusal
        upgrade = parser.should_upgrade()
        if upgrade:  # TimedHttpProtocol.on_headers_complete's lines, inlined
            self._phase = BUSY
        else:
            self._phase = BODY
            if self._last_read + self._body_timeout < self._timer_at:
                self._arm(self._last_read + self._body_timeout)
        # uvicorn's on_headers_complete, inlined (uvicorn is pinned: compat.py), with the
        # target read once, by parse_target: the reading forward auth shares. An invalid
        # target raises here, and the parser's error handling answers 400.
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if upgrade and self._should_upgrade():
            return
        # (uvicorn's root_path is never set here: the sidecar serves from /.)
        scope["raw_path"], scope["path"], scope["query_string"] = parse_target(self.url)
        app = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        existing_cycle = self.cycle
        cycle = self.cycle = _Cycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if upgrade:
            scope["extensions"] = {TAKE_OVER: self._take_over}  # type: ignore[dict-item]
            cycle.keep_alive = False  # unless taken over, nothing follows on it
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the one before is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
        hook = type(self).head_hook
        if hook is not None and not self.pipeline:  # its app task starts next
            try:
                hook(self.scope)  # type: ignore[arg-type]
            except Exception:  # the request goes on: the app does the work itself
                log.exception("request head hook failed")

    def _take_over(
        self, on_shutdown: Callable[[], None]
    ) -> tuple[asyncio.Transport, bytes, Callable[[], None]]:
        """Hand the connection to the caller: the transport, the bytes that arrived after
        the head, and a function to call when the caller is done with it. uvicorn's
        cycle counts as answered; nothing more is parsed. Until released, the
        connection stays one the server knows: a graceful shutdown calls
        ``on_shutdown`` (instead of waiting for it to end by itself)."""
        cycle = self.cycle
        cycle.response_started = cycle.response_complete = True
        cycle.on_response = lambda: None
        early = bytes(self._upgrade_bytes or b"")
        self._upgrade_bytes = None
        self._stop_timing()
        self._on_shutdown = on_shutdown
        return self.transport, early, lambda: self.connections.discard(self)

    def shutdown(self) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
            return
        super().shutdown()

    def _unsupported_upgrade_warning(self) -> None:
        pass  # upgrades are the app's business (websocket.py), not a warning

    def _refuse(self, error: SidecarError) -> None:
        """Answer the request whose head broke a limit, then close the connection."""
        body = error.body()
        self.transport.write(
            b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%b"
            % (error.status, _REASONS.get(error.status, b""), len(body), body)
        )
        self.transport.close()
        self._in_head = False


_REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle with the framing fixes above, and a whole
    response (a ``BODY_FOLLOWS`` start and its body) written in one piece."""

    _close_delimited = False
    _held: Any = None  # a BODY_FOLLOWS start, until its body comes

    async def send(self, message: Any) -> None:
        held = self._held
        if held is not None:  # the body of a BODY_FOLLOWS start: out with its head
            self._held = None
            if await self._writable():
                self._write_whole(held, message.get("body", b""))
            return
        if message["type"] == "http.response.start" and not self.response_started:
            if message.get(BODY_FOLLOWS):
                self._held = message
                return
            status = message["status"]
            if (
                self.scope["http_version"] == "1.0"
                and status not in NO_BODY_STATUSES
                and self.scope["method"] != "HEAD"
                and not _framed(message)
            ):
                self._close_delimited = True
                self.chunked_encoding = False  # keeps uvicorn from adding chunked
            await super().send(message)
            if status in NO_BODY_STATUSES:
                self.expected_content_length = 0  # its Content-Length announces no body
            return
        if self._close_delimited and not self.response_complete:
            await self._send_until_close(message)
        else:
            await super().send(message)

    def _write_whole(self, start: Any, body: bytes) -> None:
        """Head and body in one write, framed as uvicorn would frame them (which writes
        them apart, after matching each header against two regular expressions: here
        one check of the whole head rejects a line break or control character smuggled
        into a header). docs/design-notes.md: a whole response, one write."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status = start["status"]
        no_body = status in NO_BODY_STATUSES or self.scope["method"] == "HEAD"
        lines = [STATUS_LINE[status]]
        framed = close_listed = False
        for name, value in (*self.default_headers, *start["headers"]):
            name = name.lower()
            if name == b"content-length":
                if not no_body and int(value) != len(body):
                    raise RuntimeError("Response body length differs from its Content-Length")
                framed = True
            elif name == b"transfer-encoding":
                raise RuntimeError("A whole response is not sent with Transfer-Encoding")
            elif name == b"connection" and b"close" in _tokens(value):
                self.keep_alive = False
                close_listed = True
            lines.append(b"%b: %b\r\n" % (name, value))
        if not self.keep_alive and not close_listed:
            lines.append(b"connection: close\r\n")
        if no_body:
            body = b""
        elif not framed and self.scope["http_version"] == "1.0":
            self.keep_alive = False  # delimited by the close
        elif not framed:
            lines.append(b"transfer-encoding: chunked\r\n")
            body = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        lines.append(b"\r\n")
        head = b"".join(lines)
        if (  # each line ends in the one CRLF it holds
            head.count(b"\n") != len(lines)
            or head.count(b"\r") != len(lines)
            or head.translate(None, _ALLOWED_IN_HEAD)
        ):
            raise RuntimeError("Invalid HTTP header")
        self.transport.write(head + body if body else head)
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    async def _writable(self) -> bool:
        """Wait while the client is not taking bytes (as uvicorn's ``send`` does); False
        once it has gone."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        return not self.disconnected

    async def _send_until_close(self, message: Any) -> None:
        if not await self._writable():
            return
        self.transport.write(message.get("body", b""))
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()


# Bytes a response head may hold: tab, CR and LF (counted apart), printable ASCII and
# obs-text, as uvicorn's header checks allow.
_ALLOWED_IN_HEAD = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip().lower() for token in value.split(b",")]


def _framed(message: Any) -> bool:
    return any(
        name.lower() in (b"content-length", b"transfer-encoding")
        for name, _ in message.get("headers", ())
    )


def protocol_for(
    limits: RequestLimits,
    on_head: HeadHook | None = None,
    timeouts: ReadTimeouts = ReadTimeouts(),  # noqa: B008 - an immutable tuple
) -> type[SidecarHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, with these limits, this
    head hook and these read timeouts."""
    attributes = {"limits": limits, "head_hook": on_head, **timeouts.attributes()}
    return type("SidecarHttpProtocol", (SidecarHttpProtocol,), attributes)
