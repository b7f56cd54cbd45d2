"""Read timeouts for every listener: uvicorn's httptools protocol, with a deadline on
each wait for the client, as nginx has.

- ``header_timeout`` (nginx's ``client_header_timeout``): a request head must be
  complete within it, counted from the connection's accept (first request) or from the
  head's first byte (later requests).
- ``body_timeout`` (``client_body_timeout``): the longest wait between two reads of a
  request body, not the time for the whole body: a slow upload that keeps sending
  lives on, one that stalls is cut. While the server itself is not reading (flow
  control paused by an app not consuming the body yet, or a ``100-continue`` not sent
  yet) the client is not the one stalling, and the wait does not count.
- ``keepalive_timeout``: the idle wait for the next request after a response.

On expiry the connection is closed without a response, as nginx does (it logs 408
and sends nothing); a body cut this way reaches the app as a disconnect. While the app
is answering, nothing is timed here (the upstream's read timeout covers that).

Cost per request: no timer. One timer per connection at a time checks the phase the
connection is in when it fires and re-arms itself for what is left; a request only
notes the time of its reads and which phase it is in (uvicorn arms and cancels a
keep-alive timer per request).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, ClassVar, NamedTuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sidecar.config.model import ServerConfig

# What the connection waits for. BUSY (falsy): nothing, the app is answering.
BUSY, IDLE, HEAD, BODY = 0, 1, 2, 3


class TimedHttpProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 60.0
    body_timeout: ClassVar[float] = 60.0
    keepalive_timeout: ClassVar[float | None] = None  # None: uvicorn's timeout_keep_alive

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.keepalive_timeout is not None:
            self.timeout_keep_alive = self.keepalive_timeout  # type: ignore[assignment]
        # All instance attributes, set here once: read on every request, and CPython's
        # attribute caches work best on instance values of one shape.
        self._header_timeout = self.header_timeout
        self._body_timeout = self.body_timeout
        self._phase = HEAD
        self._since = 0.0  # HEAD: when the head began; IDLE: when the last response ended
        self._last_read = 0.0  # when bytes last came
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self._last_read = self.loop.time()
        self._arm(self._since + self._header_timeout)

    # The per-request part below is inlined (no helper calls): it runs on every request.
    def data_received(self, data: bytes) -> None:
        if self._phase:  # a client sending: noted (SidecarHttpProtocol has the same lines)
            now = self._last_read = self.loop.time()
            if self._phase == IDLE:  # a new request's first bytes
                self._phase = HEAD
                self._since = now
                if now + self._header_timeout < self._timer_at:
                    self._arm(now + self._header_timeout)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            self._phase = BUSY  # the connection is the upgrade's business from here
        else:
            self._phase = BODY  # until the body is complete: _deadline_passed sees it
            if self._last_read + self._body_timeout < self._timer_at:
                self._arm(self._last_read + self._body_timeout)
        super().on_headers_complete()

    def _unset_keepalive_if_required(self) -> None:
        pass  # uvicorn's keep-alive timer is never armed: _deadline_passed does its job

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive wait timed by the connection's one timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        now = self._since = self.loop.time()
        self._phase = IDLE
        if now + self.timeout_keep_alive < self._timer_at:
            self._arm(now + self.timeout_keep_alive)

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than ``deadline``."""
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._deadline_passed)
            self._timer_at = deadline

    def _stop_timing(self) -> None:
        self._phase = BUSY
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _deadline_passed(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        phase = self._phase
        if not phase:
            return  # the response that ends it arms the timer again
        now = self.loop.time()
        if phase == BODY:
            cycle = self.cycle
            if cycle is None or not cycle.more_body:  # the body is complete: the app answers
                self._phase = BUSY
                return  # the response that ends it arms the timer again
            if self.flow.read_paused or cycle.waiting_for_100_continue:
                self._last_read = now  # the wait is the server's, not the client's
            deadline = self._last_read + self._body_timeout
        elif phase == HEAD:
            deadline = self._since + self._header_timeout
        else:
            deadline = self._since + self.timeout_keep_alive
        if deadline > now:
            self._arm(deadline)
            return
        self._phase = BUSY
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_timing()


class ReadTimeouts(NamedTuple):
    header: float = 60.0
    body: float = 60.0
    keepalive: float | None = None  # None: uvicorn's timeout_keep_alive

    @classmethod
    def of(cls, server: ServerConfig) -> ReadTimeouts:
        return cls(
            server.client_header_timeout_seconds,
            server.client_body_timeout_seconds,
            server.keepalive_timeout_seconds,
        )

    def attributes(self) -> dict[str, Any]:
        """The protocol class attributes that set them."""
        return {
            "header_timeout": self.header,
            "body_timeout": self.body,
            "keepalive_timeout": self.keepalive,
        }


def timed_protocol_for(timeouts: ReadTimeouts) -> type[TimedHttpProtocol]:
    """uvicorn's protocol with these read timeouts (the admin and decision listeners)."""
    return type("TimedHttpProtocol", (TimedHttpProtocol,), timeouts.attributes())
