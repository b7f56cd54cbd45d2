"""Tracing's pure parts: the ``tracing`` config section (defaults, mistakes by YAML path),
W3C ``traceparent`` parsing, and that the request path never loads the tracing code
while tracing is off."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sidecar.config import loading as config
from sidecar.config.model import ConfigError, TracingConfig
from sidecar.observability.record import RequestRecord
from sidecar.observability.tracing import OtelTracer, parse_traceparent
from tests.harness import base_config, merge

VALID = base_config(redis_url="redis://127.0.0.1:6379/0", upstream_url="http://127.0.0.1:9000")
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def problems(**override: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(merge(VALID, override), {})
    return caught.value.problems


def test_tracing_is_off_by_default_with_the_spec_defaults() -> None:
    tracing = config.parse(VALID, {}).tracing
    assert tracing.enabled is False
    assert tracing.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert tracing.service_name == "callcov-sidecar"
    assert tracing.sample_ratio == 0.01


@pytest.mark.parametrize(
    ("tracing", "expected"),
    [
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: must be less than or equal to 1"),
        ({"sample_ratio": -0.1}, "tracing.sample_ratio: must be greater than or equal to 0"),
        ({"otlp_endpoint": "grpc://collector:4317"}, "tracing.otlp_endpoint: must be an http"),
        ({"otlp_endpoint": "http:///v1/traces"}, "tracing.otlp_endpoint: must be an http"),
        (
            {"otlp_endpoint": "http://collector:4318/v1/traces?token=x"},
            "tracing.otlp_endpoint: must not carry a query or fragment",
        ),
        ({"service_name": ""}, "tracing.service_name: must have at least 1 character"),
        ({"enabled": "sometimes"}, "tracing.enabled: must be a valid boolean"),
        ({"exporter": "jaeger"}, "tracing.exporter: unknown key"),
    ],
)
def test_tracing_mistakes_are_reported_by_path(tracing: dict[str, Any], expected: str) -> None:
    found = problems(tracing=tracing)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (f"00-{TRACE}-{PARENT}-01", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-00", (int(TRACE, 16), int(PARENT, 16), False)),
        (f"00-{TRACE}-{PARENT}-03", (int(TRACE, 16), int(PARENT, 16), True)),  # other flags
        (f" 00-{TRACE}-{PARENT}-01 ", (int(TRACE, 16), int(PARENT, 16), True)),  # OWS
        (f"01-{TRACE}-{PARENT}-01-later", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-{PARENT}-01", None),  # upper-case hex
        (f"00-{TRACE[:-1]}-{PARENT}-01", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_traceparent_parsing_follows_w3c(header: str, parsed: tuple[int, int, bool] | None) -> None:
    assert parse_traceparent(header.encode()) == parsed


def test_the_request_path_never_loads_the_tracing_code_while_tracing_is_off() -> None:
    code = (
        "import sys\n"
        "from sidecar.app.dispatch import Sidecar\n"
        "from sidecar.config import loading\n"
        "from tests.harness import base_config\n"
        "c = loading.parse(base_config(redis_url='redis://127.0.0.1:1/0',"
        " upstream_url='http://127.0.0.1:9'), {})\n"
        "Sidecar(c, 'redis://127.0.0.1:1/0')\n"
        "print(sorted(m for m in sys.modules if m.startswith(TRACING)))\n"
    )
    # redis-py itself imports opentelemetry.sdk.metrics when it is installed (its own,
    # uninitialised, metrics); what tracing needs is never loaded.
    tracing = ("sidecar.observability.tracing", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    code = f"TRACING = {tracing!r}\n" + code
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def unsampled_hop(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """What the upstream gets for a request the sample leaves out."""
    settings = TracingConfig(enabled=True, sample_ratio=0.0, otlp_endpoint="http://127.0.0.1:9/")
    tracer = OtelTracer(settings)
    try:
        record = RequestRecord(
            method="GET", path="/a", route="proxy", request_id="r", client=None, started=0.0
        )
        trace, context = tracer.server(headers, record, None, "1.1")
        assert trace is None  # no span: nothing for the access log, no child spans
        assert context is not None
        return dict(context)
    finally:
        tracer.shutdown()


def test_an_unsampled_parent_is_passed_on_with_a_new_parent_id_and_its_tracestate() -> None:
    hop = unsampled_hop(
        [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode()), (b"tracestate", b"a=1,b=2")]
    )
    version, trace_id, parent_id, flags = hop[b"traceparent"].decode().split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00")
    assert parent_id != PARENT and len(parent_id) == 16
    assert hop[b"tracestate"] == b"a=1,b=2"


@pytest.mark.parametrize("tracestate", [b"a=1\x01", b"a=\xff", b"x=" + b"y" * 9000])
def test_a_tracestate_that_is_not_printable_ascii_is_dropped(tracestate: bytes) -> None:
    hop = unsampled_hop(
        [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode()), (b"tracestate", tracestate)]
    )
    assert b"tracestate" not in hop
    assert hop[b"traceparent"].startswith(f"00-{TRACE}-".encode())


def test_a_new_unsampled_trace_tells_the_upstream_it_is_not_sampled() -> None:
    hop = unsampled_hop([(b"tracestate", b"orphan=1")])  # no traceparent: a new trace
    version, trace_id, parent_id, flags = hop[b"traceparent"].decode().split("-")
    assert (version, len(trace_id), len(parent_id), flags) == ("00", 32, 16, "00")
    assert b"tracestate" not in hop
