"""What the request path sees of tracing: a per-request ``RequestTrace`` and the
``Tracer`` that starts one, as protocols. tracing.py implements them with OpenTelemetry;
this module imports nothing, so the request path can name the types while the
OpenTelemetry packages stay unloaded unless ``tracing.enabled``.

With tracing off there is no Tracer and a request's ``trace`` is None: each component
checks that once and otherwise runs its untraced code. With tracing on, so is the
``trace`` of a request outside the sample (most of them): it only has a trace context
for the upstream, computed when it starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")

# Child span names (the server span is ``METHOD route``, the client span ``METHOD``).
KEY_LOOKUP = "redis key lookup"
RATE_LIMIT = "rate limit check"
# The event on a WebSocket handshake's span when the sidecar closes the socket itself.
WEBSOCKET_CUT_OFF = "callcov.websocket.cut_off"


class Described(Protocol):
    """What a span reads of a request's RequestRecord (record.py)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...  # normalised
    @property
    def route(self) -> str: ...
    @property
    def client(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def auth_method(self) -> str | None: ...
    @property
    def key_prefix(self) -> str | None: ...
    @property
    def would_deny(self) -> int | None: ...


class Upstream(Protocol):
    """One upstream request as its client span sees it; ``end`` when it is over."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``traceparent`` (and ``tracestate``) for the upstream, naming this hop."""
        ...

    def end(self, status: int) -> None: ...


class RequestTrace(Protocol):
    """The trace of one sampled request: its server span."""

    allowed: bool  # the decision admitted the request (``callcov.decision: allow``)

    @property
    def trace_id(self) -> str:
        """Hex (for the access log)."""
        ...

    @property
    def span_id(self) -> str: ...

    def timed(self, name: str, work: Awaitable[T]) -> Awaitable[T]:
        """``work``, awaited inside a child span ``name``."""
        ...

    def upstream(self, method: str, address: str, port: int) -> Upstream:
        """Start the client span of the upstream request."""
        ...

    def event(self, name: str, attributes: dict[str, str | int]) -> None:
        """Add an event to the server span."""
        ...

    def end(self, record: Described) -> None:
        """End the server span with what ``record`` says the request did."""
        ...


class Tracer(Protocol):
    """Starts a request's trace; built once per process when tracing is enabled."""

    def server(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        record: Described,
        server: tuple[str, int] | None,
        http_version: str,
    ) -> tuple[RequestTrace | None, list[tuple[bytes, bytes]] | None]:
        """The trace of the request ``record`` describes (method and normalised path),
        continuing the W3C ``traceparent`` among ``headers`` if there is a valid one:
        (its trace, None) when it is sampled, else (None, the ``traceparent`` and
        ``tracestate`` headers its upstream request carries)."""
        ...

    def dropped(self) -> int:
        """Finished spans that never reached the collector (queue full, export failed)."""
        ...

    def shutdown(self) -> None:
        """Export what is queued (briefly) and stop."""
        ...
