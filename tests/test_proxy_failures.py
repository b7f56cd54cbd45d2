"""Upstream failure modes: refused -> 502, too slow -> 504, both JSON; a cut-off body."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.harness import SidecarProcess, free_port, wait_until


@pytest.fixture(scope="module")
def nothing_upstream(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = config_for(upstream={"url": f"http://127.0.0.1:{free_port()}"})
    process = SidecarProcess(config, tmp_path_factory.mktemp("down")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def impatient(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    # Longer than proxy._WATCH_SLOW_HEAD_AFTER: the read timeout then runs on a timer
    # re-armed when the slow-head watch starts.
    config = config_for(upstream={"read_timeout_seconds": 1.0})
    process = SidecarProcess(config, tmp_path_factory.mktemp("impatient")).start()
    yield process
    process.stop()


def logged_status(process: SidecarProcess, request_id: str) -> int | None:
    for line in process.logs().splitlines():
        if line.startswith("{") and request_id in line:
            entry = json.loads(line)
            if entry.get("request_id") == request_id and "status" in entry:
                return int(entry["status"])
    return None


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_refusing_connections_gives_502_json(
    nothing_upstream: SidecarProcess, user: str, method: str
) -> None:
    client = Api(nothing_upstream.url)
    key = client.create_key(user)["api_key"]
    for headers in ({"X-API-Key": key}, client.bearer(user)):
        response = client.http.request(
            method, "/api/v1/analysis/", headers={**headers, "X-Request-ID": "r-502"}, content=b"a"
        )
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "Upstream unavailable"}
        assert response.headers["x-request-id"] == "r-502"


def test_unauthenticated_requests_get_401_even_when_the_upstream_is_down(
    nothing_upstream: SidecarProcess,
) -> None:
    response = httpx.get(nothing_upstream.url + "/api/v1/analysis/")
    assert response.status_code == 401


def test_upstream_too_slow_gives_504_json(
    impatient: SidecarProcess, user: str, recorder: Any
) -> None:
    client = Api(impatient.url)
    started = time.monotonic()
    response = client.http.get(
        "/slow", params={"seconds": 3}, headers={**client.bearer(user), "X-Request-ID": "r-504"}
    )
    waited = time.monotonic() - started
    assert response.status_code == 504
    assert 0.95 <= waited < 2.9  # the read timeout, not the watch delay nor the answer
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Upstream timed out"}
    assert response.headers["x-request-id"] == "r-504"
    assert recorder.received[-1].path == "/slow"  # it did reach the upstream
    # A fast request right after is unaffected.
    assert client.http.get("/api/v1/analysis/", headers=client.bearer(user)).status_code == 200


def test_upstream_dropping_the_connection_mid_body_cuts_the_client_body_off(
    sidecar: SidecarProcess, api: Api, user: str
) -> None:
    headers = {**api.bearer(user), "X-Request-ID": "r-cut-off"}
    # A short body, never a complete-looking one.
    with (
        pytest.raises(httpx.RemoteProtocolError),
        api.http.stream("GET", "/truncate?bytes=100000", headers=headers) as response,
    ):
        assert response.status_code == 200
        response.read()
    wait_until(lambda: logged_status(sidecar, "r-cut-off") is not None, timeout=5)
    assert logged_status(sidecar, "r-cut-off") == 502
    assert api.http.get("/api/v1/analysis/", headers=api.bearer(user)).status_code == 200


def test_an_upstream_stalling_in_a_small_body_gives_a_clean_504(
    impatient: SidecarProcess, user: str, recorder: Any
) -> None:
    """Small bodies are read whole before anything is sent: still time for a 504."""
    client = Api(impatient.url)
    headers = {**client.bearer(user), "X-Request-ID": "r-stall-small"}
    response = client.http.get("/stall", params={"bytes": 1000}, headers=headers, timeout=10)
    assert response.status_code == 504
    assert response.json() == {"detail": "Upstream timed out"}
    wait_until(lambda: recorder.stalls_released == 1, timeout=5)  # connection closed


def test_an_upstream_stalling_mid_stream_cuts_the_client_off_and_logs_504(
    impatient: SidecarProcess, user: str, recorder: Any
) -> None:
    client = Api(impatient.url)
    headers = {**client.bearer(user), "X-Request-ID": "r-stall-stream"}
    received = 0
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.http.stream(
            "GET", "/stall", params={"bytes": 2 * 1024 * 1024}, headers=headers, timeout=10
        ) as response,
    ):
        assert response.status_code == 200  # the head went out before the stall
        for piece in response.iter_raw():
            received += len(piece)
    assert received == 2 * 1024 * 1024  # all it had, then the connection was cut
    wait_until(lambda: logged_status(impatient, "r-stall-stream") is not None, timeout=5)
    assert logged_status(impatient, "r-stall-stream") == 504
    wait_until(lambda: recorder.stalls_released == 1, timeout=5)
    assert client.http.get("/api/v1/analysis/", headers=client.bearer(user)).status_code == 200
