"""Prometheus metrics. Labels carry only bounded values: route class, status code,
auth method and reason, never a key, token, user id or raw path.

Works in prometheus-client's multiprocess mode too (``--workers N``): every metric
is a plain Counter/Gauge/Histogram, which that mode stores in per-process files the
supervisor aggregates. Counters kept elsewhere as plain ints (cheap on the hot path)
are copied into real Counters by ``sync()``: at scrape time in a single process, every
second in a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.observe import RequestRecord

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class _Source:
    counter: Counter
    read: Callable[[], dict[str, float]]
    seen: dict[str, float] = field(default_factory=dict)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidecar_requests", "Requests handled, by route class and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.auth = Counter(
            "sidecar_auth",
            "Authentication outcomes: ok, or why not (missing, malformed, unknown, revoked, "
            "expired, jwt_invalid, store_unavailable)",
            ["method", "outcome"],
            registry=r,
        )
        self.auth_seconds = Histogram(
            "sidecar_auth_seconds",
            "Time spent authenticating",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "sidecar_upstream_seconds",
            "Upstream round trip until response headers",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "sidecar_in_flight_requests", "Requests in progress", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.revocations = Counter(
            "sidecar_revocation_messages", "Revocation messages received", registry=r
        )
        self.rate_limit_store_errors = Counter(
            "sidecar_rate_limit_store_errors",
            "Rate-limit checks that could not reach Redis",
            registry=r,
        )
        self._sources: list[_Source] = []

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.route, str(record.status)).inc()
        if record.auth_outcome is not None:
            self.auth.labels(record.auth_method or "none", record.auth_outcome).inc()
        if record.auth_seconds is not None:
            self.auth_seconds.observe(record.auth_seconds)
        if record.upstream_seconds is not None:
            self.upstream_seconds.observe(record.upstream_seconds)

    def count_from(
        self, name: str, doc: str, read: Callable[[], dict[str, float]], label: str
    ) -> None:
        """Expose counters kept elsewhere (plain numbers, label value -> count)."""
        counter = Counter(name, doc, [label], registry=self.registry)
        self._sources.append(_Source(counter, read))

    def sync(self) -> None:
        """Copy what the ``count_from`` sources counted since the last call."""
        for source in self._sources:
            for value, count in source.read().items():
                delta = count - source.seen.get(value, 0)
                if delta > 0:
                    source.counter.labels(value).inc(delta)
                source.seen[value] = count
