"""Prometheus metrics. Labels carry only bounded values: route class, status code,
auth method and reason, never a key, token, user id or raw path.

The hot path never touches prometheus-client: ``observe()`` and ``in_flight`` only add
to plain dicts, lists and ints, and ``sync()`` moves what they counted since its last
call into the real Counters, Histograms and Gauge (so do counters kept elsewhere, via
``count_from``). A prometheus-client update costs a lock per value, and in multiprocess
mode (``--workers N``) also an os.getpid() and an mmap write; ``sync()`` pays that once
per label set instead of once per request. It runs at scrape time in a single process
and every second in a worker, whose files the supervisor aggregates; so a worker's
numbers reach /metrics up to a second late. ``observe()`` and ``sync()`` must run on
the same thread (the event loop's).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.observability.record import RequestRecord

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class _Source:
    counter: Counter
    read: Callable[[], dict[str, float]]
    labelled: bool = True
    seen: dict[str, float] = field(default_factory=dict)


class _Level:
    """The number of requests in progress; ``sync()`` copies it into the gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class _Batch:
    """Observations for one unlabelled Histogram, added to it in bulk by ``flush()``.

    prometheus-client has no public way to add many observations at once, so ``flush()``
    increments what ``Histogram.observe()`` itself increments: ``_sum``, and ``_buckets``,
    one value per bound in ``_upper_bounds`` (the last one +Inf), not cumulative: an
    observation counts in the first bucket whose bound is >= it. These are private, so
    the constructor checks they are there: a prometheus-client that changes them fails
    at startup and in tests/test_metrics.py rather than exposing wrong numbers.
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        if not (
            isinstance(bounds, list)
            and isinstance(buckets, list)
            and len(bounds) == len(buckets)
            and all(hasattr(b, "inc") for b in buckets)
            and hasattr(getattr(histogram, "_sum", None), "inc")
        ):
            raise RuntimeError(
                "prometheus_client.Histogram no longer has _upper_bounds, _buckets and _sum "
                "as sidecar/metrics.py expects; update _Batch.flush()"
            )
        self._histogram = histogram
        self._bounds = tuple(bounds)
        self._counts = [0] * len(bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1  # first bound >= amount
        self._sum += amount

    def flush(self) -> None:
        if not any(self._counts):
            return
        for bucket, count in zip(self._histogram._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._histogram._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0


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
            "expired, canary, failed_auth_limited, jwt_invalid, store_unavailable)",
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
        self.in_flight_gauge = Gauge(
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
        self.report_only = Counter(
            "sidecar_report_only",
            "Report-only mode: requests forwarded that enforce mode would have refused, "
            "by the status it would have sent (401, 429, 503)",
            ["outcome"],
            registry=r,
        )
        self.in_flight = _Level()
        # Since the last sync(): (route, status) and (auth method, outcome) -> count.
        self._requests: dict[tuple[str, int], int] = {}
        self._auth: dict[tuple[str | None, str], int] = {}
        self._report_only: dict[int, int] = {}
        self._auth_seconds = _Batch(self.auth_seconds)
        self._upstream_seconds = _Batch(self.upstream_seconds)
        self._sources: list[_Source] = []

    def observe(self, record: RequestRecord) -> None:
        key = (record.route, record.status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if record.auth_outcome is not None:
            auth = (record.auth_method, record.auth_outcome)
            self._auth[auth] = self._auth.get(auth, 0) + 1
        if record.would_deny is not None:
            self._report_only[record.would_deny] = self._report_only.get(record.would_deny, 0) + 1
        if record.auth_seconds is not None:
            self._auth_seconds.observe(record.auth_seconds)
        if record.upstream_seconds is not None:
            self._upstream_seconds.observe(record.upstream_seconds)

    def count_from(
        self, name: str, doc: str, read: Callable[[], dict[str, float]], label: str
    ) -> None:
        """Expose counters kept elsewhere (plain numbers, label value -> count)."""
        counter = Counter(name, doc, [label], registry=self.registry)
        self._sources.append(_Source(counter, read))

    def count_total(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose one unlabelled counter kept elsewhere (a plain number)."""
        counter = Counter(name, doc, registry=self.registry)
        self._sources.append(_Source(counter, lambda: {"": read()}, labelled=False))

    def sync(self) -> None:
        """Copy into prometheus-client what was counted since the last call."""
        requests, self._requests = self._requests, {}
        for (route, status), n in requests.items():
            self.requests.labels(route, str(status)).inc(n)
        auths, self._auth = self._auth, {}
        for (method, outcome), n in auths.items():
            self.auth.labels(method or "none", outcome).inc(n)
        reported, self._report_only = self._report_only, {}
        for status, n in reported.items():
            self.report_only.labels(str(status)).inc(n)
        self._auth_seconds.flush()
        self._upstream_seconds.flush()
        self.in_flight_gauge.set(self.in_flight.value)
        for source in self._sources:
            for value, count in source.read().items():
                delta = count - source.seen.get(value, 0)
                if delta > 0:
                    (source.counter.labels(value) if source.labelled else source.counter).inc(delta)
                source.seen[value] = count
