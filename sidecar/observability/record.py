"""What one request did, handed to the access log and the metrics when it ends."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.types import AuthMethod, Headers, Route
from sidecar.observability.spans import RequestTrace


@dataclass(slots=True)
class RequestRecord:
    method: str
    path: str  # normalised
    route: Route
    request_id: str
    client: str | None
    started: float  # time.perf_counter()
    status: int = 0
    responded: bool = False  # the response has begun: too late for an error response
    duration: float = 0.0
    upstream_seconds: float | None = None
    auth_seconds: float | None = None
    auth_method: AuthMethod | None = None
    auth_outcome: str | None = None  # "ok" or a NotAuthenticated reason / "store_unavailable"
    user_id: str | None = None
    key_prefix: str | None = None
    would_deny: int | None = None  # report-only mode: the status enforce mode would have sent
    bytes_in: int = 0
    bytes_out: int = 0
    trace: RequestTrace | None = None  # tracing.enabled, a sampled request (spans.py)
    trace_context: Headers | None = None  # tracing.enabled, not sampled: for the upstream
