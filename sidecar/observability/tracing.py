"""OpenTelemetry tracing (``tracing.enabled``): a server span per request, its child
spans, and the W3C trace context for the upstream; exported over OTLP/HTTP by the SDK's
batch span processor. Imported only when tracing is enabled (app/build.py), so the
OpenTelemetry packages are never loaded otherwise.

Sampling is decided here, once per request, before any OpenTelemetry object exists: a
valid incoming ``traceparent``'s sampled flag, else ``sample_ratio`` for a new trace (the
SDK's ``ParentBased(TraceIdRatioBased)`` rule, drawn once instead of on the trace id,
which no one else has seen yet). Most requests are not sampled, and for those an SDK
span would cost more than the rest of the tracing: they get no span object, no context
lookup, only the ``traceparent`` the upstream needs (sampled flag off) computed once.
The SDK records every span it is handed (``ALWAYS_ON``): only sampled requests are.

Nothing secret goes into a span: the route is the normalised path with any key or JWT
pasted into it masked, never the query string; no header but User-Agent (masked too).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import uuid
from binascii import hexlify as _hexlify
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from sidecar.config.model import TracingConfig
from sidecar.core.errors import SidecarError
from sidecar.core.types import Headers
from sidecar.observability.logs import redact
from sidecar.observability.spans import Described

T = TypeVar("T")
log = logging.getLogger("sidecar")

# version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1); a later
# version may append fields after a dash.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# tracestate is passed on only as printable ASCII of a sane length (W3C allows 32
# members of at most 256 characters; longer may be dropped), never anything else raw.
_TRACESTATE = re.compile(rb"[\x20-\x7e]{1,8192}")
_SHUTDOWN_SECONDS = 2.0  # then queued spans are dropped rather than delay the exit
_REDIS = {"db.system.name": "redis"}
_DECIDED_ROUTES = frozenset({"proxy", "public", "forward_auth"})
_ROOT = Context()  # no parent: never look up the current context
_getrandbits = random.getrandbits
_draw = random.random


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """(trace id, parent id, sampled) of a valid ``traceparent``; None if invalid."""
    match = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if match is None:
        return None
    version, trace_hex, parent_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, bool(int(flags_hex, 16) & 1)


def _traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def _clean(value: str) -> str:
    return redact(value) if "sk_" in value or "." in value else value


class _HashedOnce(Resource):
    """The process's resource, hashed once: the OTLP encoder groups every span it
    exports by resource, and the SDK's hash serialises the attributes to JSON each time."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans of every batch it failed to deliver."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            self.failed += len(spans)
            raise
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingProcessor(BatchSpanProcessor):
    """The batch processor, counting spans it drops because its queue is full (the SDK
    only logs that)."""

    queue_full = 0

    def on_end(self, span: ReadableSpan) -> None:
        queue: Any = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self.queue_full += 1
        super().on_end(span)


class OtelTracer:
    """The ``Tracer`` (spans.py) over the OpenTelemetry SDK, one per process."""

    def __init__(self, config: TracingConfig) -> None:
        self._ratio = config.sample_ratio
        self._provider = TracerProvider(
            sampler=ALWAYS_ON,  # handed only the requests ``server`` sampled
            # One instance per process: the workers of one sidecar tell apart.
            resource=_HashedOnce(
                Resource.create(
                    {"service.name": config.service_name, "service.instance.id": str(uuid.uuid4())}
                )
            ),
        )
        self._exporter = _CountingExporter(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        self._processor = _CountingProcessor(self._exporter)
        self._provider.add_span_processor(self._processor)
        self.tracer = self._provider.get_tracer("sidecar")

    def server(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        record: Described,
        server: tuple[str, int] | None,
        http_version: str,
    ) -> tuple[_Sampled | None, Headers | None]:
        for name, _ in headers:  # lower case in an ASGI scope
            if name == b"traceparent" or name == b"tracestate":
                return self._continued(headers, record, server, http_version)
        return self._new_trace(headers, record, server, http_version)

    def _new_trace(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        record: Described,
        server: tuple[str, int] | None,
        http_version: str,
    ) -> tuple[_Sampled | None, Headers | None]:
        """``server`` for a request without a valid trace context."""
        if _draw() < self._ratio:
            return self._start(_ROOT, headers, record, server, http_version), None
        # Outside the sample (most requests): "00-<trace id>-<parent id>-00" from 192
        # random bits. (An all-zero id, which W3C calls invalid, has odds of 2**-64 at
        # worst; the upstream would then start a trace of its own.)
        ids = _hexlify(_getrandbits(192).to_bytes(24, "little"), b"-", -16)
        return None, [(b"traceparent", b"00-" + ids + b"-00")]

    def _continued(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        record: Described,
        server: tuple[str, int] | None,
        http_version: str,
    ) -> tuple[_Sampled | None, Headers | None]:
        """``server`` for a request that carries trace context."""
        traceparent = tracestate = None
        repeated = False
        for name, value in headers:
            if name == b"traceparent":
                repeated |= traceparent is not None
                traceparent = value
            elif name == b"tracestate":
                tracestate = value if tracestate is None else tracestate + b"," + value
        parent = None if repeated or traceparent is None else parse_traceparent(traceparent)
        if parent is None:  # a new trace (W3C: an invalid traceparent's tracestate goes too)
            return self._new_trace(headers, record, server, http_version)
        if tracestate is not None and not _TRACESTATE.fullmatch(tracestate):
            tracestate = None
        trace_id, parent_id, sampled = parent
        if not sampled:
            return None, _unsampled(trace_id, tracestate)
        state = TraceState.from_header([tracestate.decode("latin-1")]) if tracestate else None
        remote = SpanContext(trace_id, parent_id, True, TraceFlags(1), state)
        context = set_span_in_context(NonRecordingSpan(remote))
        return self._start(context, headers, record, server, http_version), None

    def _start(
        self,
        context: Context,
        headers: Sequence[tuple[bytes, bytes]],
        record: Described,
        server: tuple[str, int] | None,
        http_version: str,
    ) -> _Sampled:
        # Method and route are set again at the end: the forward-auth listener learns
        # them (the original request's) after the span starts.
        attributes: dict[str, str | int] = {"network.protocol.version": http_version}
        if server is not None:
            attributes["server.address"], attributes["server.port"] = server
        if record.client is not None:
            attributes["client.address"] = record.client
        for name, value in headers:
            if name == b"user-agent":
                attributes["user_agent.original"] = _clean(value.decode("latin-1"))
        span = self.tracer.start_span(record.method, context, SpanKind.SERVER, attributes)
        return _Sampled(self, span)

    def dropped(self) -> int:
        return self._exporter.failed + self._processor.queue_full

    def shutdown(self) -> None:
        # A collector that is down or slow must not hold the exit: after a moment the
        # exporter is shut, and what is still queued fails fast.
        stop = threading.Timer(_SHUTDOWN_SECONDS, self._exporter.shutdown)
        stop.daemon = True
        stop.start()
        try:
            self._provider.shutdown()
        finally:
            stop.cancel()


def _unsampled(trace_id: int, tracestate: bytes | None) -> Headers:
    """The trace context the upstream gets for a request outside the sample: its trace,
    a fresh parent id (the sidecar's hop, recorded nowhere), the sampled flag off."""
    out = [(b"traceparent", _traceparent(trace_id, _getrandbits(64) or 1, False))]
    if tracestate:
        out.append((b"tracestate", tracestate))
    return out


class _Sampled:
    """A sampled request: its server span and the context its children hang from."""

    __slots__ = ("_context", "_span", "_tracer", "allowed", "span_id", "trace_id")

    def __init__(self, owner: OtelTracer, span: Span) -> None:
        self._tracer = owner.tracer
        self._span = span
        self._context = set_span_in_context(span)
        ids = span.get_span_context()
        self.trace_id = f"{ids.trace_id:032x}"
        self.span_id = f"{ids.span_id:016x}"
        self.allowed = False

    def timed(self, name: str, work: Awaitable[T]) -> Awaitable[T]:
        return self._timed(name, work)

    async def _timed(self, name: str, work: Awaitable[T]) -> T:
        span = self._tracer.start_span(name, self._context, SpanKind.CLIENT, _REDIS)
        try:
            return await work
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            if not isinstance(exc, SidecarError) or exc.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            span.end()

    def upstream(self, method: str, address: str, port: int) -> _Hop:
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": address,
            "server.port": port,
            "network.protocol.version": "1.1",
        }
        return _Hop(self._tracer.start_span(method, self._context, SpanKind.CLIENT, attributes))

    def event(self, name: str, attributes: dict[str, str | int]) -> None:
        self._span.add_event(name, attributes)

    def end(self, record: Described) -> None:
        span = self._span
        route = _clean(record.path)
        span.update_name(f"{record.method} {route}")
        status = record.status
        attributes: dict[str, str | int] = {  # set at once: the span locks for each call
            "http.request.method": record.method,
            "url.path": route,
            "http.route": route,
        }
        if status:
            attributes["http.response.status_code"] = status
        if status >= 500 or not status:
            span.set_status(Status(StatusCode.ERROR))
        if record.user_id is not None:
            attributes["enduser.id"] = record.user_id
        if record.auth_method is not None:
            attributes["callcov.auth.method"] = record.auth_method
        if record.key_prefix is not None:
            attributes["callcov.key.prefix"] = record.key_prefix
        if self.allowed or (status == 200 and record.route == "forward_auth"):
            attributes["callcov.decision"] = "allow"
        elif record.route in _DECIDED_ROUTES and status:
            attributes["callcov.decision"] = str(status)
        if record.would_deny is not None:
            attributes["callcov.would_deny"] = record.would_deny
        span.set_attributes(attributes)
        span.end()


class _Hop:
    """The client span of one upstream request."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def headers(self) -> list[tuple[bytes, bytes]]:
        context = self._span.get_span_context()
        out = [(b"traceparent", _traceparent(context.trace_id, context.span_id, True))]
        if context.trace_state:
            out.append((b"tracestate", context.trace_state.to_header().encode()))
        return out

    def end(self, status: int) -> None:
        span = self._span
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 400 or not status:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
