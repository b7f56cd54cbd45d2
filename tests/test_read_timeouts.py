"""Read timeouts on every listener (server.client_header_timeout_seconds,
client_body_timeout_seconds, keepalive_timeout_seconds), against a real sidecar
process: a stalled head, a stalled body and an idle connection are closed (without a
response, as nginx), while an honest client is served and a slow upload that keeps
sending goes through."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import ServerThread, SidecarProcess, free_port, read_until_closed
from tests.upstream_app import RecordingUpstream

TIMEOUT = 1.0
# How long a test waits for the sidecar to close a connection before it fails.
CLOSE_DEADLINE = TIMEOUT + 10.0
PUBLIC_PATH = "/api/v1/auth/login"  # forwarded without a credential (base_config)


@pytest.fixture(scope="module")
def timed(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    config = config_for(
        server={
            "client_header_timeout_seconds": TIMEOUT,
            "client_body_timeout_seconds": TIMEOUT,
            "keepalive_timeout_seconds": TIMEOUT,
        },
        forward_auth={"enabled": True, "port": free_port()},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("timeouts")).start()
    yield process
    process.stop()


def _ports(sidecar: SidecarProcess) -> dict[str, int]:
    config = sidecar.config
    return {
        "public": config["server"]["port"],
        "forward_auth": config["forward_auth"]["port"],
        "admin": config["admin"]["port"],
    }


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(CLOSE_DEADLINE)
    return sock


def _honest_get(sidecar: SidecarProcess) -> None:
    answer = httpx.get(sidecar.url + PUBLIC_PATH, timeout=5)
    assert answer.status_code == 200


@pytest.mark.parametrize("listener", ["public", "forward_auth", "admin"])
def test_a_connection_that_sends_nothing_is_closed(timed: SidecarProcess, listener: str) -> None:
    with _connect(_ports(timed)[listener]) as sock:
        assert read_until_closed(sock, CLOSE_DEADLINE) == b""


@pytest.mark.parametrize("listener", ["public", "forward_auth", "admin"])
def test_a_stalled_head_is_closed_without_a_response_while_others_are_served(
    timed: SidecarProcess, listener: str
) -> None:
    with _connect(_ports(timed)[listener]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        _honest_get(timed)
        assert read_until_closed(sock, CLOSE_DEADLINE) == b""  # nginx answers nothing either


def test_a_head_trickled_byte_by_byte_is_closed_all_the_same(timed: SidecarProcess) -> None:
    head = b"GET " + PUBLIC_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 50
    with _connect(_ports(timed)["public"]) as sock:
        started = time.monotonic()
        for byte in head:  # each byte sooner than the timeout: the head's total counts
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - started > CLOSE_DEADLINE:
                pytest.fail("a trickled head was never cut")
            time.sleep(TIMEOUT / 10)  # the attack's own pace, not a synchronisation
        assert read_until_closed(sock, CLOSE_DEADLINE) == b""


def test_a_stalled_body_is_cut_and_so_is_its_upstream_request(
    timed: SidecarProcess, recorder: RecordingUpstream
) -> None:
    with _connect(_ports(timed)["public"]) as sock:
        sock.sendall(
            b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" % PUBLIC_PATH.encode()
            + b"x" * 1000
        )
        assert recorder.first_chunk.wait(CLOSE_DEADLINE)  # the upload reached the upstream
        _honest_get(timed)
        assert read_until_closed(sock, CLOSE_DEADLINE) == b""
    deadline = time.monotonic() + CLOSE_DEADLINE
    while recorder.aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.aborted == 1


def test_a_slow_upload_that_keeps_sending_outlives_the_body_timeout(
    timed: SidecarProcess, recorder: RecordingUpstream
) -> None:
    pieces = 8

    def slowly() -> Iterator[bytes]:
        for _ in range(pieces):
            yield b"y" * 1000
            time.sleep(TIMEOUT / 3)  # the client's pace: slower in total than the timeout

    answer = httpx.post(timed.url + PUBLIC_PATH, content=slowly(), timeout=30)
    assert answer.status_code == 200
    assert recorder.received[-1].body_bytes == pieces * 1000


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(timed: SidecarProcess) -> None:
    for listener, path in (("public", PUBLIC_PATH), ("forward_auth", "/"), ("admin", "/healthz")):
        with _connect(_ports(timed)[listener]) as sock:
            sock.sendall(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            response = read_until_closed(sock, CLOSE_DEADLINE)
            assert response.startswith(b"HTTP/1.1 "), (listener, response)
            assert b"connection: close" not in response.lower(), listener  # kept alive, then idle


async def _reads_late(scope: Any, receive: Any, send: Any) -> None:
    """An upstream that reads nothing of the body for three body timeouts, then all."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(TIMEOUT * 3)  # the slow upstream this test is about
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"%d" % size
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_an_upload_held_back_by_a_slow_upstream_is_not_cut(config_for: Any, tmp_path: Any) -> None:
    """While the sidecar itself stops reading (the upstream takes nothing), the client is
    not stalling: the body timeout does not count that wait."""
    upstream = ServerThread(_reads_late).start()
    config = config_for(
        server={"client_body_timeout_seconds": TIMEOUT},
        upstream={"url": upstream.url, "read_timeout_seconds": 30},
    )
    sidecar = SidecarProcess(config, tmp_path).start()
    size = 32 * 1024 * 1024
    try:
        answer = httpx.post(sidecar.url + PUBLIC_PATH, content=b"z" * size, timeout=60)
    finally:
        sidecar.stop()
        upstream.stop()
    assert answer.status_code == 200
    assert answer.text == str(size)
