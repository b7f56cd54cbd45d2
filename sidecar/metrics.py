"""Prometheus metrics. Labels carry only bounded values: route class, status code,
auth method and reason, never a key, token, user id or raw path."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.observe import RequestRecord

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidecar_requests", "Requests handled", ["route", "status"], registry=r
        )
        self.auth = Counter(
            "sidecar_auth", "Authentication outcomes", ["method", "outcome"], registry=r
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
        self.in_flight = Gauge("sidecar_in_flight_requests", "Requests in progress", registry=r)
        self.revocations = Counter(
            "sidecar_revocation_messages", "Revocation messages received", registry=r
        )
        self.rate_limit_store_errors = Counter(
            "sidecar_rate_limit_store_errors",
            "Rate-limit checks that could not reach Redis",
            registry=r,
        )

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
        """Expose counters kept elsewhere (plain ints on the hot path) at scrape time."""
        self.registry.register(_Callback(name, doc, read, label))


class _Callback(Collector):
    def __init__(
        self, name: str, doc: str, read: Callable[[], dict[str, float]], label: str
    ) -> None:
        self._name, self._doc, self._read, self._label = name, doc, read, label

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in self._read().items():
            family.add_metric([value], count)
        yield family
