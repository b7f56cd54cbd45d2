"""A real OTLP/HTTP trace receiver for the tracing tests: an HTTP server that decodes
each protobuf export with ``opentelemetry-proto`` and keeps the spans and the raw bytes.

It can also answer 500 to every export (``failing``), as a broken collector does, or take
``delay`` seconds over each answer, as an overloaded one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    kind: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error


@dataclass
class OtlpReceiver:
    """Listens on 127.0.0.1 (``endpoint`` is the URL to export to)."""

    failing: bool = False
    delay: float = 0.0
    spans: list[ExportedSpan] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # every request body, as received
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received(self.path, body)
                time.sleep(receiver.delay)  # a slow collector (0: none)
                if receiver.failing:
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def received(self, path: str, body: bytes) -> None:
        with self._lock:
            self.raw.append(body)
        if path != "/v1/traces" or self.failing:
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        decoded = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded.append(
                        ExportedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            resource=resource,
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self.spans.extend(decoded)

    def wait_for(
        self, predicate: Callable[[list[ExportedSpan]], bool], timeout: float = 10.0
    ) -> list[ExportedSpan]:
        """All spans received, once ``predicate`` holds for them (polled until a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(f"spans never matched; received: {spans}")
            time.sleep(0.02)

    def trace(self, trace_id: str, count: int, timeout: float = 10.0) -> list[ExportedSpan]:
        """The spans of ``trace_id``, once at least ``count`` arrived, its server span
        (which ends last, maybe in a later export) among them."""

        def complete(all_: list[ExportedSpan]) -> bool:
            mine = [s for s in all_ if s.trace_id == trace_id]
            return len(mine) >= count and any(s.kind == "server" for s in mine)

        return [s for s in self.wait_for(complete, timeout) if s.trace_id == trace_id]

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.raw.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}
