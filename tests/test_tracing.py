"""Tracing (SPEC Part 3, issue 29): real sidecar processes export over OTLP/HTTP to a real
receiver (tests/otlp_receiver.py) that decodes the protobuf; spans are checked by name,
parentage and attributes, the upstream's ``traceparent`` against the client span, and
every exported byte for secrets."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token
from tests.harness import (
    SidecarProcess,
    free_port,
    remember_secret,
    wait_until,
)
from tests.otlp_receiver import ExportedSpan, OtlpReceiver
from tests.test_websocket import EchoUpstream, closed_code, open_socket
from tests.upstream_app import Received, RecordingUpstream

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
LIMITED = "/api/v1/limited/"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


def traced_config(config_for: Any, endpoint: str, ratio: float = 1.0) -> dict[str, Any]:
    config: dict[str, Any] = config_for(
        tracing={"enabled": True, "otlp_endpoint": endpoint, "sample_ratio": ratio},
        auth={"scopes": {"analysis:read": [{"methods": ["GET"], "paths": ["/api/v1/analysis/"]}]}},
        forward_auth={"enabled": True, "port": free_port(), "path_prefix": "/authz"},
        rate_limits={
            "enabled": True,
            "default": {"requests": 1000, "per_seconds": 60},
            "rules": [{"path": LIMITED, "requests": 1, "per_seconds": 600}],
        },
    )
    return config


def start(config: dict[str, Any], workdir: Path, **env: str) -> SidecarProcess:
    """A sidecar whose batch processor exports every 50 ms (the SDK's own variables)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"OTEL_BSP_SCHEDULE_DELAY": "50", **env}.items():
            patch.setenv(name, value)
        return SidecarProcess(config, workdir).start()


@pytest.fixture(scope="module")
def traced(
    config_for: Any, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    process = start(traced_config(config_for, receiver.endpoint), tmp_path_factory.mktemp("t"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def key(traced: SidecarProcess) -> dict[str, Any]:
    """A key nobody has used yet: its first request misses the key cache."""
    api = Api(traced.url)
    user = f"tracing-user-{os.getpid()}"
    try:
        return {**api.create_key(user), "user_id": user}
    finally:
        api.http.close()


def received(recorder: RecordingUpstream, path: str) -> Received:
    wait_until(lambda: any(r.path == path for r in recorder.received))
    return next(r for r in recorder.received if r.path == path)


def server_span(spans: list[ExportedSpan]) -> ExportedSpan:
    (server,) = [s for s in spans if s.kind == "server"]
    return server


def spans_of(receiver: OtlpReceiver, traceparent: str, count: int) -> list[ExportedSpan]:
    match = _TRACEPARENT.fullmatch(traceparent)
    assert match is not None, traceparent
    return receiver.trace(match.group(1), count)


def test_an_allowed_request_has_a_server_span_with_children_and_the_upstream_names_its_client_span(
    traced: SidecarProcess,
    receiver: OtlpReceiver,
    recorder: RecordingUpstream,
    key: dict[str, Any],
) -> None:
    response = httpx.get(
        traced.url + "/api/v1/analysis/?token=query-secret-123",
        headers={"X-API-Key": key["api_key"], "X-Request-ID": "traced-allowed-1"},
    )
    assert response.status_code == 200
    hop = received(recorder, "/api/v1/analysis/")
    traceparent = hop.header("traceparent")
    assert traceparent is not None
    spans = spans_of(receiver, traceparent, 4)
    server = server_span(spans)
    assert server.name == "GET /api/v1/analysis/"
    assert server.parent_span_id == ""
    children = {s.name: s for s in spans if s is not server}
    assert set(children) == {"redis key lookup", "rate limit check", "GET"}
    assert all(s.parent_span_id == server.span_id for s in children.values())
    client = children["GET"]
    assert client.kind == "client"
    assert traceparent == f"00-{server.trace_id}-{client.span_id}-01"
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == "127.0.0.1"
    assert server.attributes == {
        "http.request.method": "GET",
        "url.path": "/api/v1/analysis/",
        "http.route": "/api/v1/analysis/",
        "network.protocol.version": "1.1",
        "server.address": "127.0.0.1",
        "server.port": traced.config["server"]["port"],
        "client.address": "127.0.0.1",
        "user_agent.original": server.attributes["user_agent.original"],
        "http.response.status_code": 200,
        "enduser.id": key["user_id"],
        "callcov.auth.method": "api_key",
        "callcov.key.prefix": key["key_prefix"],
        "callcov.decision": "allow",
    }
    assert server.attributes["user_agent.original"].startswith("python-httpx/")
    assert server.resource["service.name"] == "callcov-sidecar"
    # The access log joins: the request's line names the server span.
    wait_until(lambda: "traced-allowed-1" in traced.logs())
    line = next(
        orjson.loads(text)
        for text in traced.logs().splitlines()
        if '"request_id":"traced-allowed-1"' in text
    )
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)


def test_a_cached_key_has_no_redis_lookup_span(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream, key: Any
) -> None:
    headers = {"X-API-Key": key["api_key"]}
    assert httpx.get(traced.url + "/api/v1/warm/", headers=headers).status_code == 200
    assert httpx.get(traced.url + "/api/v1/cached/", headers=headers).status_code == 200
    traceparent = received(recorder, "/api/v1/cached/").header("traceparent")
    assert traceparent is not None
    spans = spans_of(receiver, traceparent, 3)
    assert sorted(s.name for s in spans) == ["GET", "GET /api/v1/cached/", "rate limit check"]


def test_refusals_carry_their_status_as_the_decision(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream, key: Any
) -> None:
    unknown = remember_secret(keyformat.generate())  # well formed, never stored
    refused = httpx.get(traced.url + "/api/v1/refused/", headers={"X-API-Key": unknown})
    assert refused.status_code == 401
    allowed = httpx.get(traced.url + LIMITED, headers={"X-API-Key": key["api_key"]})
    assert allowed.status_code == 200
    limited = httpx.get(traced.url + LIMITED, headers={"X-API-Key": key["api_key"]})
    assert limited.status_code == 429
    api = Api(traced.url)
    reader = f"tracing-reader-{os.getpid()}"
    created = api.http.post(
        "/api/v1/api-keys/", json={"scopes": ["analysis:read"]}, headers=api.bearer(reader)
    )
    assert created.status_code == 201, created.text
    scoped = remember_secret(created.json()["api_key"])
    api.http.close()
    out_of_scope = httpx.post(traced.url + "/api/v1/analysis/", headers={"X-API-Key": scoped})
    assert out_of_scope.status_code == 403
    decisions = f"http://127.0.0.1:{traced.config['forward_auth']['port']}"
    forbidden = httpx.get(
        decisions + "/authz",
        headers={
            "X-API-Key": key["api_key"],
            "X-Original-Method": "GET",
            "X-Original-URI": "/api/v1/api-keys/",
        },
    )
    assert forbidden.status_code == 403

    def by_decision(spans: list[ExportedSpan]) -> dict[str, ExportedSpan]:
        return {
            f"{s.name} {s.attributes.get('callcov.decision')}": s
            for s in spans
            if s.kind == "server"
        }

    wanted = {
        "GET /api/v1/refused/ 401",
        f"GET {LIMITED} 429",
        "GET /api/v1/api-keys/ 403",
        "POST /api/v1/analysis/ 403",
    }
    spans = receiver.wait_for(lambda all_: wanted <= set(by_decision(all_)))
    found = by_decision(spans)
    unauthenticated = found["GET /api/v1/refused/ 401"]
    assert unauthenticated.attributes["http.response.status_code"] == 401
    assert unauthenticated.attributes["callcov.key.prefix"] == unknown[:14]
    assert "enduser.id" not in unauthenticated.attributes
    assert unauthenticated.status_code != 2  # a refusal is not a server error
    under = [s for s in spans if s.parent_span_id == unauthenticated.span_id]
    assert [s.name for s in under] == ["redis key lookup"]  # never the upstream
    rate_limited = found[f"GET {LIMITED} 429"]
    (check,) = [s for s in spans if s.parent_span_id == rate_limited.span_id]
    assert (check.name, check.attributes["error.type"]) == ("rate limit check", "RateLimited")
    assert rate_limited.attributes["enduser.id"] == key["user_id"]
    assert not any(r.path == "/api/v1/refused/" for r in recorder.received)
    scope_refused = found["POST /api/v1/analysis/ 403"]
    assert scope_refused.attributes["enduser.id"] == reader
    under = [s for s in spans if s.parent_span_id == scope_refused.span_id]
    assert [s.name for s in under] == ["redis key lookup"]  # no rate limit, no upstream


def test_a_forward_auth_decision_is_a_server_span_continuing_the_proxy_trace(
    traced: SidecarProcess, receiver: OtlpReceiver, key: Any
) -> None:
    decisions = f"http://127.0.0.1:{traced.config['forward_auth']['port']}"
    response = httpx.get(
        decisions + "/authz",
        headers={
            "X-API-Key": key["api_key"],
            "X-Original-Method": "POST",
            "X-Original-URI": "/api/v1/decided/?secret=query-secret-456",
            "traceparent": f"00-{TRACE[:-4]}fa01-{PARENT}-01",
        },
    )
    assert response.status_code == 200
    spans = receiver.trace(TRACE[:-4] + "fa01", 2)
    server = server_span(spans)
    assert server.name == "POST /api/v1/decided/"
    assert server.parent_span_id == PARENT
    assert server.attributes["callcov.decision"] == "allow"
    assert server.attributes["url.path"] == "/api/v1/decided/"
    assert server.attributes["enduser.id"] == key["user_id"]
    assert [s.name for s in spans if s is not server] == ["rate limit check"]


def test_an_incoming_sampled_context_is_continued_and_its_tracestate_passed_on(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream
) -> None:
    response = httpx.get(
        traced.url + "/api/v1/auth/continued",  # a public path
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc"},
    )
    assert response.status_code == 200
    hop = received(recorder, "/api/v1/auth/continued")
    spans = receiver.trace(TRACE, 2)
    server = server_span(spans)
    assert server.parent_span_id == PARENT
    assert server.attributes["callcov.decision"] == "allow"
    (client,) = [s for s in spans if s.kind == "client"]
    assert hop.header("traceparent") == f"00-{TRACE}-{client.span_id}-01"
    assert hop.header("tracestate") == "vendor=abc"


def test_an_unsampled_incoming_context_is_not_recorded_but_reaches_the_upstream(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream
) -> None:
    unsampled = "1" * 32
    httpx.get(
        traced.url + "/api/v1/auth/unsampled",
        headers={"traceparent": f"00-{unsampled}-{PARENT}-00"},
    )
    httpx.get(traced.url + "/api/v1/auth/after")  # a new trace, sampled at ratio 1.0
    after = received(recorder, "/api/v1/auth/after").header("traceparent")
    assert after is not None
    spans_of(receiver, after, 2)  # exported after anything the first request ended
    assert not [s for s in receiver.spans if s.trace_id == unsampled]
    forwarded = received(recorder, "/api/v1/auth/unsampled").header("traceparent")
    match = _TRACEPARENT.fullmatch(forwarded or "")
    assert match is not None and match.group(1) == unsampled and match.group(3) == "00"
    assert match.group(2) != PARENT  # the sidecar's hop, not the client's


@pytest.mark.parametrize(
    "malformed",
    ["00-xyz-nonsense", f"00-{'0' * 32}-{PARENT}-01", f"ff-{TRACE}-{PARENT}-01"],
)
def test_a_malformed_traceparent_starts_a_new_trace(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream, malformed: str
) -> None:
    path = f"/api/v1/auth/malformed-{malformed[:2]}-{len(malformed)}"
    httpx.get(traced.url + path, headers={"traceparent": malformed, "tracestate": "a=b"})
    hop = received(recorder, path)
    traceparent = hop.header("traceparent")
    assert traceparent is not None and traceparent != malformed
    spans = spans_of(receiver, traceparent, 2)
    assert server_span(spans).parent_span_id == ""
    assert hop.header("tracestate") is None


def test_with_tracing_off_the_clients_trace_context_reaches_the_upstream_untouched(
    sidecar: SidecarProcess, recorder: RecordingUpstream
) -> None:
    for n, traceparent in enumerate([f"00-{TRACE}-{PARENT}-01", "00-not-valid-at-all"]):
        path = f"/api/v1/auth/untouched-{n}"
        headers = {"traceparent": traceparent, "tracestate": "vendor=xyz,other=1"}
        assert httpx.get(sidecar.url + path, headers=headers).status_code == 200
        hop = received(recorder, path)
        assert hop.header("traceparent") == traceparent
        assert hop.header("tracestate") == "vendor=xyz,other=1"


def test_no_key_jwt_or_query_string_is_in_any_exported_byte(
    traced: SidecarProcess, receiver: OtlpReceiver, recorder: RecordingUpstream, key: Any
) -> None:
    token = make_token("tracing-jwt-user")
    requests = [
        ("/api/v1/secret-a/?api_key=" + key["api_key"], {"X-API-Key": key["api_key"]}),
        ("/api/v1/secret-b/?q=query-secret-789", {"Authorization": f"Bearer {token}"}),
        (f"/api/v1/{key['api_key']}/pasted", {"Authorization": f"Bearer {key['api_key']}"}),
        (f"/api/v1/{token}/jwt-pasted", {"User-Agent": f"agent {token}"}),
    ]
    for target, headers in requests:
        httpx.get(traced.url + target, headers=headers)
    wanted = {"GET /api/v1/secret-a/", "GET /api/v1/secret-b/"}
    receiver.wait_for(
        lambda spans: (
            wanted <= {s.name for s in spans} and sum("pasted" in s.name for s in spans) >= 2
        )
    )
    exported = b"".join(receiver.raw)
    for secret in (key["api_key"], token, "query-secret", "api_key="):
        assert secret.encode() not in exported
    assert key["api_key"][:14].encode() in exported  # the public prefix is there


def test_the_sampled_flag_is_honoured_where_the_ratio_says_never(
    config_for: Any, receiver: OtlpReceiver, recorder: RecordingUpstream, tmp_path: Path
) -> None:
    process = start(traced_config(config_for, receiver.endpoint, ratio=0.0), tmp_path)
    try:
        sampled = "2" * 32
        httpx.get(
            process.url + "/api/v1/auth/ratio-zero",
            headers={"traceparent": f"00-{sampled}-{PARENT}-01"},
        )
        httpx.get(process.url + "/api/v1/auth/ratio-zero-new")
        spans = receiver.trace(sampled, 2)
        assert server_span(spans).parent_span_id == PARENT
        fresh = received(recorder, "/api/v1/auth/ratio-zero-new").header("traceparent")
        match = _TRACEPARENT.fullmatch(fresh or "")
        assert match is not None and match.group(3) == "00"  # the backend is told: not sampled
        assert not [s for s in receiver.spans if s.trace_id == match.group(1)]
        wait_until(lambda: "ratio-zero-new" in process.logs())
        lines = {
            line["path"]: line
            for line in map(orjson.loads, process.logs().splitlines())
            if "path" in line
        }
        assert lines["/api/v1/auth/ratio-zero"]["trace_id"] == sampled
        assert "trace_id" not in lines["/api/v1/auth/ratio-zero-new"]  # not traced
    finally:
        process.stop()


@pytest.mark.parametrize("collector", ["down", "answering 500", "too slow"])
def test_a_broken_collector_never_fails_a_request_and_drops_are_counted(
    config_for: Any, recorder: RecordingUpstream, tmp_path: Path, collector: str
) -> None:
    slow = collector == "too slow"
    failing = OtlpReceiver(failing=not slow, delay=3.0 if slow else 0.0)
    endpoint = failing.endpoint
    if collector == "down":
        endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    # Each export gives up after a second (the SDK's variable) instead of ten.
    config = traced_config(config_for, endpoint)
    process = start(config, tmp_path, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="1")
    try:
        for n in range(20):
            response = httpx.get(process.url + f"/api/v1/auth/broken-{n}", timeout=5)
            assert response.status_code == 200

        def dropped() -> float:
            metrics = httpx.get(process.admin_url + "/metrics").text
            found = re.search(r"^sidecar_trace_spans_dropped_total (\S+)$", metrics, re.M)
            return float(found.group(1)) if found else 0.0

        wait_until(lambda: dropped() >= 1, timeout=30, interval=0.2)
        if collector != "down":
            assert failing.raw  # it was asked
    finally:
        process.stop()
        failing.stop()


def test_a_websocket_handshake_span_records_the_cut_off_when_its_key_is_revoked(
    config_for: Any, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    echo = EchoUpstream().start()
    config = traced_config(config_for, receiver.endpoint)
    config["upstream"]["url"] = echo.url
    process = start(config, tmp_path)
    try:
        api = Api(process.url)
        user = f"tracing-ws-{os.getpid()}"
        key = api.create_key(user)
        with open_socket(process, {"X-API-Key": key["api_key"]}) as socket:
            socket.send("ping")
            assert socket.recv(timeout=10) == "ping"
            traceparent = echo.handshakes[-1]["traceparent"]
            deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
            assert deleted.status_code == 200
            assert closed_code(socket)[0] == 1008
        spans = spans_of(receiver, traceparent, 4)  # a fresh key: lookup and rate limit too
        server = server_span(spans)
        assert server.name == "GET /ws/echo"
        assert server.attributes["http.response.status_code"] == 101
        assert server.attributes["callcov.decision"] == "allow"
        assert server.events == [
            (
                "callcov.websocket.cut_off",
                {
                    "callcov.websocket.close_code": 1008,
                    "callcov.websocket.reason": "credential_invalid",
                },
            )
        ]
        (client,) = [s for s in spans if s.name == "GET"]
        assert client.attributes["http.response.status_code"] == 101
        assert traceparent == f"00-{server.trace_id}-{client.span_id}-01"
        api.http.close()
    finally:
        process.stop()
        echo.stop()


def test_each_worker_exports_its_own_spans_as_its_own_instance(
    config_for: Any, receiver: OtlpReceiver, recorder: RecordingUpstream, tmp_path: Path
) -> None:
    config = traced_config(config_for, receiver.endpoint)
    config["rate_limits"] = {"enabled": False}  # and then no rate-limit span
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        process = SidecarProcess(config, tmp_path, ("--workers", "2")).start()
    try:
        for n in range(40):  # a new connection each: the kernel spreads them over both
            response = httpx.get(process.url + f"/api/v1/auth/worker-{n}")
            assert response.status_code == 200
        names = {f"GET /api/v1/auth/worker-{n}" for n in range(40)}
        spans = receiver.wait_for(lambda all_: names <= {s.name for s in all_})
        instances = {s.resource["service.instance.id"] for s in spans if s.name in names}
        assert len(instances) == 2
        assert (
            "sidecar_trace_spans_dropped_total 0.0"
            in httpx.get(process.admin_url + "/metrics").text
        )
    finally:
        process.stop()
