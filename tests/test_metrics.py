"""Metrics: what ``observe()`` and ``in_flight`` count reaches prometheus-client at
``sync()``, exactly as if every request had been observed there one by one; in a single
process and in multiprocess mode (worker processes, aggregated by MultiProcessCollector)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from sidecar.observability.metrics import _LATENCY_BUCKETS, Metrics, _Batch
from sidecar.observability.record import RequestRecord

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parent.parent


def samples(registry: CollectorRegistry) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def assert_same(got: Samples, expected: Samples) -> None:
    """Equal, sums up to float rounding (added in another order), everything else exactly."""
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(want, rel=1e-12), key
        else:
            assert got[key] == want, key


def record(
    route: str = "proxy",
    status: int = 200,
    method: str | None = "api_key",
    outcome: str | None = "ok",
    auth: float | None = None,
    upstream: float | None = None,
) -> RequestRecord:
    return RequestRecord(
        method="GET", path="/p", route=route, request_id="r", client=None, started=0.0,
        status=status, auth_method=method, auth_outcome=outcome, auth_seconds=auth,
        upstream_seconds=upstream,
    )  # fmt: skip


def some_records(seed: int, n: int) -> list[RequestRecord]:
    """Durations on, between, below and above the bucket bounds."""
    rng = random.Random(seed)

    def seconds() -> float | None:
        return rng.choice(
            [None, 0.0, rng.choice(_LATENCY_BUCKETS), rng.uniform(0, 0.1), rng.uniform(0, 20)]
        )

    return [
        record(
            route=rng.choice(["proxy", "public", "api_keys", "not_found"]),
            status=rng.choice([200, 201, 401, 429, 502]),
            method=rng.choice([None, "api_key", "jwt"]),
            outcome=rng.choice([None, "ok", "unknown", "revoked"]),
            auth=seconds(),
            upstream=seconds(),
        )
        for _ in range(n)
    ]


def reference(records: list[RequestRecord]) -> Samples:
    """The request metrics as /metrics showed them when prometheus-client observed every
    request itself."""
    registry = CollectorRegistry()
    requests = Counter("sidecar_requests", "", ["route", "status"], registry=registry)
    auth = Counter("sidecar_auth", "", ["method", "outcome"], registry=registry)
    auth_seconds = Histogram(
        "sidecar_auth_seconds", "", buckets=_LATENCY_BUCKETS, registry=registry
    )
    upstream_seconds = Histogram(
        "sidecar_upstream_seconds", "", buckets=_LATENCY_BUCKETS, registry=registry
    )
    for r in records:
        requests.labels(r.route, str(r.status)).inc()
        if r.auth_outcome is not None:
            auth.labels(r.auth_method or "none", r.auth_outcome).inc()
        if r.auth_seconds is not None:
            auth_seconds.observe(r.auth_seconds)
        if r.upstream_seconds is not None:
            upstream_seconds.observe(r.upstream_seconds)
    return samples(registry)


def request_metrics(found: Samples) -> Samples:
    families = ("sidecar_requests_", "sidecar_auth_", "sidecar_upstream_seconds_")
    return {k: v for k, v in found.items() if k[0].startswith(families)}


def test_sync_exposes_exactly_what_was_observed() -> None:
    metrics = Metrics()
    metrics.observe(record(auth=0.0003, upstream=0.004))
    metrics.observe(record(auth=0.0005, upstream=0.01))  # on a bound: in that bucket
    metrics.observe(record(status=401, method=None, outcome="missing", auth=0.0001))
    metrics.observe(record(route="public", method=None, outcome=None))
    metrics.observe(record(status=502, auth=0.002, upstream=12.0))  # above 10 s: +Inf only
    before = samples(metrics.registry)
    assert value(before, "sidecar_requests_total", route="proxy", status="200") == 0
    assert value(before, "sidecar_auth_seconds_count") == 0

    metrics.sync()
    after = samples(metrics.registry)
    requests = {k[1]: v for k, v in after.items() if k[0] == "sidecar_requests_total"}
    assert requests == {
        frozenset({("route", "proxy"), ("status", "200")}): 2,
        frozenset({("route", "proxy"), ("status", "401")}): 1,
        frozenset({("route", "public"), ("status", "200")}): 1,
        frozenset({("route", "proxy"), ("status", "502")}): 1,
    }
    auth = {k[1]: v for k, v in after.items() if k[0] == "sidecar_auth_total"}
    assert auth == {
        frozenset({("method", "api_key"), ("outcome", "ok")}): 3,
        frozenset({("method", "none"), ("outcome", "missing")}): 1,
    }
    bounds = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25"]
    bounds += ["0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
    auth_buckets = [value(after, "sidecar_auth_seconds_bucket", le=b) for b in bounds]
    assert auth_buckets == [3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    assert value(after, "sidecar_auth_seconds_count") == 4
    assert value(after, "sidecar_auth_seconds_sum") == pytest.approx(0.0029, rel=1e-12)
    upstream_buckets = [value(after, "sidecar_upstream_seconds_bucket", le=b) for b in bounds]
    assert upstream_buckets == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    assert value(after, "sidecar_upstream_seconds_count") == 3
    assert value(after, "sidecar_upstream_seconds_sum") == pytest.approx(12.014, rel=1e-12)


def test_many_syncs_add_up_to_observing_one_by_one() -> None:
    records = some_records(seed=1, n=3000)
    metrics = Metrics()
    for i, r in enumerate(records):
        metrics.observe(r)
        if i % 700 == 0:
            metrics.sync()
    metrics.sync()
    assert_same(request_metrics(samples(metrics.registry)), reference(records))


def test_a_sync_with_nothing_new_changes_nothing() -> None:
    metrics = Metrics()
    for r in some_records(seed=2, n=50):
        metrics.observe(r)
    metrics.sync()
    once = generate_latest(metrics.registry)
    metrics.sync()
    metrics.sync()
    assert generate_latest(metrics.registry) == once


def test_the_in_flight_gauge_shows_the_number_at_sync_time() -> None:
    metrics = Metrics()

    def gauge() -> float:
        return value(samples(metrics.registry), "sidecar_in_flight_requests")

    for _ in range(3):
        metrics.in_flight.inc()
    metrics.in_flight.dec()
    assert gauge() == 0
    metrics.sync()
    assert gauge() == 2
    metrics.in_flight.dec()
    metrics.in_flight.dec()
    metrics.sync()
    assert gauge() == 0


def test_a_histogram_without_the_internals_we_feed_is_refused() -> None:
    _Batch(Histogram("fine", "", registry=None))  # the installed prometheus-client has them
    for internal in ("_buckets", "_sum", "_upper_bounds"):
        histogram = Histogram("changed", "", registry=None)
        delattr(histogram, internal)
        with pytest.raises(RuntimeError, match="update _Batch"):
            _Batch(histogram)


_WORKER = """
import json, sys
from sidecar.observability.metrics import Metrics
from sidecar.observability.record import RequestRecord

job = json.load(sys.stdin)
metrics = Metrics()
for i, fields in enumerate(job["records"]):
    metrics.in_flight.inc()
    metrics.observe(RequestRecord(**fields))
    metrics.in_flight.dec()
    if i % 100 == 0:
        metrics.sync()
for _ in range(job["in_flight"]):
    metrics.in_flight.inc()
metrics.sync()
"""


def test_multiprocess_mode_aggregates_the_workers_exactly(tmp_path: Path) -> None:
    """Two worker processes write their files; the supervisor's collector adds them up."""
    jobs = [(some_records(seed=3, n=700), 2), (some_records(seed=4, n=500), 1)]
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for records, in_flight in jobs:
        job = {"records": [asdict(r) for r in records], "in_flight": in_flight}
        subprocess.run(
            [sys.executable, "-c", _WORKER], input=json.dumps(job), text=True, env=env,
            cwd=ROOT, check=True, timeout=60,
        )  # fmt: skip
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    found = samples(registry)
    assert_same(request_metrics(found), reference(jobs[0][0] + jobs[1][0]))
    assert value(found, "sidecar_in_flight_requests") == 3
