"""Bodies stream both ways, proved by behaviour; size limits; the upstream response is
released when the client goes away."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.harness import SidecarProcess, wait_until
from tests.upstream_app import RecordingUpstream, pattern

MIB = 1024 * 1024
LIMIT = MIB


@pytest.fixture(scope="module")
def small(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """A sidecar with a 1 MiB body limit and an upstream pool of one connection."""
    config = config_for(server={"max_body_bytes": LIMIT}, upstream={"pool_size": 1})
    process = SidecarProcess(config, tmp_path_factory.mktemp("small")).start()
    yield process
    process.stop()


def memory_kib(process: SidecarProcess, field: str) -> int:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc status")


def reset_peak_memory(process: SidecarProcess) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; return that RSS in KiB."""
    assert process.process is not None
    Path(f"/proc/{process.process.pid}/clear_refs").write_text("5")
    return memory_kib(process, "VmRSS")


def connect(process: SidecarProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", process.config["server"]["port"]), timeout=10)


def post_raw(
    process: SidecarProcess,
    user: str,
    headers: str,
    body: bytes = b"",
    target: str = "/api/v1/analysis/",
) -> socket.socket:
    """A POST written by hand on a new connection (``headers``: CRLF-terminated lines),
    authenticated as ``user``; the caller reads the answer, or leaves."""
    sock = connect(process)
    token = Api(process.url).bearer(user)["Authorization"]
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n{headers}\r\n"
    sock.sendall(head.encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(v)
        for k, _, v in (x.partition(b":") for x in lines[1:])
        if k.lower() == b"content-length"
    )
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece
        body += piece
    return int(lines[0].split()[1]), body


def access_log_status(process: SidecarProcess, request_id: str) -> int | None:
    for line in process.logs().splitlines():
        if request_id in line and line.startswith("{"):
            entry = json.loads(line)
            if entry.get("request_id") == request_id and "status" in entry:
                return int(entry["status"])
    return None


def test_upload_streams_the_first_chunk_reaches_the_upstream_before_the_last_is_sent(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    chunks = list(pattern(4 * 65536))
    seen_before_last: list[bool] = []

    def body() -> Iterator[bytes]:
        yield chunks[0]
        # A buffering proxy would wait for the whole body: the upstream would see nothing.
        seen_before_last.append(recorder.first_chunk.wait(timeout=10))
        yield from chunks[1:]

    response = api.http.post("/api/v1/analysis/", content=body(), headers=api.bearer(user))
    assert response.status_code == 200, response.text
    assert seen_before_last == [True]
    assert response.json()["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_download_streams_the_client_gets_the_first_chunk_before_the_upstream_sends_the_rest(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    total = 2 * MIB
    digest = hashlib.sha256()
    with api.http.stream(
        "GET",
        f"/gated-download?bytes={total}",
        headers=api.bearer(user),
        timeout=httpx.Timeout(10, read=5),
    ) as response:
        assert response.status_code == 200
        pieces = response.iter_raw()
        first = next(pieces)  # the upstream holds the rest back until we say so
        digest.update(first)
        recorder.release.set()
        for piece in pieces:
            digest.update(piece)
    expected = hashlib.sha256(b"".join(pattern(total))).hexdigest()
    assert digest.hexdigest() == expected


def test_a_200_mb_upload_arrives_intact_without_being_held_in_memory(
    sidecar: SidecarProcess, api: Api, user: str
) -> None:
    total = 200 * MIB
    expected = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for piece in pattern(total, MIB):
            expected.update(piece)
            yield piece

    key = api.create_key(user)["api_key"]
    baseline = reset_peak_memory(sidecar)
    response = api.http.post(
        "/api/v1/analysis/",
        content=body(),
        headers={"X-API-Key": key, "Content-Length": str(total), "Content-Type": "audio/wav"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    received = response.json()
    assert received["body_bytes"] == total
    assert received["body_sha256"] == expected.hexdigest()
    growth_mib = (memory_kib(sidecar, "VmHWM") - baseline) / 1024
    assert growth_mib < 50, f"sidecar peak RSS grew by {growth_mib:.0f} MiB"


def test_a_large_download_arrives_intact_without_being_held_in_memory(
    sidecar: SidecarProcess, api: Api, user: str
) -> None:
    total = 128 * MIB + 12345
    digest = hashlib.sha256()
    size = 0
    baseline = reset_peak_memory(sidecar)
    with api.http.stream("GET", f"/download?bytes={total}", headers=api.bearer(user)) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(total)
        for piece in response.iter_raw():
            digest.update(piece)
            size += len(piece)
    assert size == total
    assert digest.hexdigest() == hashlib.sha256(b"".join(pattern(total))).hexdigest()
    growth_mib = (memory_kib(sidecar, "VmHWM") - baseline) / 1024
    assert growth_mib < 50, f"sidecar peak RSS grew by {growth_mib:.0f} MiB"


def test_a_chunked_upload_is_forwarded_intact(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    chunks = [b"", b"a", *pattern(3 * MIB + 17, 100_003), b"", b"z"]
    response = api.http.put("/api/v1/analysis/x", content=iter(chunks), headers=api.bearer(user))
    assert response.status_code == 200
    data = b"".join(chunks)
    assert recorder.received[-1].body_bytes == len(data)
    assert recorder.received[-1].body_sha256 == hashlib.sha256(data).hexdigest()


def test_content_length_over_the_limit_gets_413_and_nothing_reaches_the_upstream(
    small: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    sock = post_raw(small, user, f"Content-Length: {LIMIT + 1}\r\n")
    status, body = read_response(sock)  # answered before a single body byte was sent
    sock.close()
    assert status == 413
    assert json.loads(body) == {"detail": f"Request body exceeds the maximum of {LIMIT} bytes"}
    assert recorder.received == [] and recorder.aborted == 0


def test_a_body_of_exactly_the_limit_is_accepted(
    small: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    client = Api(small.url)
    response = client.http.post(
        "/api/v1/analysis/", content=b"x" * LIMIT, headers=client.bearer(user)
    )
    assert response.status_code == 200
    assert recorder.received[-1].body_bytes == LIMIT
    chunked = client.http.post(
        "/api/v1/analysis/", content=iter([b"x" * (LIMIT // 2)] * 2), headers=client.bearer(user)
    )
    assert chunked.status_code == 200
    assert recorder.received[-1].body_bytes == LIMIT


def test_a_chunked_body_growing_past_the_limit_gets_413_and_the_upstream_never_gets_it_whole(
    small: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    """Decision: the upload streams, so the upstream has seen the first bytes by the time
    the limit is crossed; the sidecar then cuts the upstream request off (its body never
    completes, so the upstream can never act on it) and answers the client 413."""
    piece = b"y" * (256 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sock = post_raw(small, user, "Transfer-Encoding: chunked\r\n", chunk * 3)
    assert recorder.first_chunk.wait(10)  # streaming: the upstream is already reading
    sock.sendall(chunk * 2 + b"0\r\n\r\n")  # now 1.25 MiB in all
    status, body = read_response(sock)
    sock.close()
    assert status == 413
    assert json.loads(body)["detail"] == f"Request body exceeds the maximum of {LIMIT} bytes"
    wait_until(lambda: recorder.aborted == 1, timeout=5)
    assert recorder.received == []


def test_a_client_leaving_mid_upload_cuts_the_upstream_request_off(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    sock = post_raw(
        sidecar,
        user,
        "X-Request-ID: gone-mid-upload\r\nTransfer-Encoding: chunked\r\n",
        b"4\r\nabcd\r\n",
    )
    assert recorder.first_chunk.wait(10)
    sock.close()
    wait_until(lambda: recorder.aborted == 1, timeout=5)
    assert recorder.received == []
    wait_until(lambda: access_log_status(sidecar, "gone-mid-upload") is not None, timeout=5)
    assert access_log_status(sidecar, "gone-mid-upload") == 499


@pytest.mark.parametrize("body", [b"", b"a small body read whole"])
def test_a_client_leaving_while_the_upstream_is_slow_to_answer_cuts_the_call_off(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str, body: bytes
) -> None:
    """The upstream has the whole request and is still working on it: the sidecar
    notices the client leaving (within ~0.5 s) instead of waiting for the answer."""
    request_id = f"gone-while-slow-{len(body)}"
    headers = f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n"
    sock = post_raw(sidecar, user, headers, body, target="/hold?seconds=30")
    wait_until(lambda: len(recorder.received) == 1, timeout=10)
    sock.close()
    wait_until(lambda: recorder.abandoned == 1, timeout=5)
    wait_until(lambda: access_log_status(sidecar, request_id) is not None, timeout=5)
    assert access_log_status(sidecar, request_id) == 499
    assert recorder.received[0].body_bytes == len(body)


def test_a_slow_answer_still_reaches_a_client_that_waits(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    client = Api(sidecar.url)
    response = client.http.post(
        "/hold?seconds=1.2", headers=client.bearer(user), content=b"body", timeout=10
    )
    assert response.status_code == 200
    assert response.json()["body_bytes"] == 4
    assert recorder.abandoned == 0


def test_a_client_leaving_mid_download_releases_the_upstream_response(
    small: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    client = Api(small.url)
    for attempt in range(3):  # the pool holds one connection: a leak would starve it
        request_id = f"gone-mid-download-{attempt}"
        headers = {**client.bearer(user), "X-Request-ID": request_id}
        with client.http.stream("GET", "/stream-forever", headers=headers) as response:
            assert response.status_code == 200
            pieces = response.iter_raw()
            for _ in range(3):
                next(pieces)
            assert recorder.open_streams == 1
        wait_until(lambda: recorder.open_streams == 0, timeout=5)
        wait_until(lambda: access_log_status(small, request_id) is not None, timeout=5)  # noqa: B023
        assert access_log_status(small, request_id) == 499
    response = client.http.get("/api/v1/analysis/", headers=client.bearer(user), timeout=5)
    assert response.status_code == 200


def test_an_upstream_answering_before_the_body_is_complete_still_gets_all_of_it(
    api: Api, user: str
) -> None:
    """The upstream starts a response of unknown length after the first chunk and keeps
    reading: the sidecar's watch for a client disconnect must not take body chunks."""
    chunks = list(pattern(4 * MIB, 32 * 1024))
    response = api.http.post("/duplex", content=iter(chunks), headers=api.bearer(user))
    assert response.status_code == 200
    assert response.content == b"reading;" + hashlib.sha256(b"".join(chunks)).hexdigest().encode()


def test_expect_100_continue_is_honoured(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    """As curl does for bodies over 1 MB: headers first, the body only after a 100."""
    body = b"b" * 100_000
    sock = post_raw(sidecar, user, f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n")
    interim = b""
    while b"\r\n\r\n" not in interim:
        piece = sock.recv(1)
        assert piece
        interim += piece
    assert interim.startswith(b"HTTP/1.1 100 ")
    sock.sendall(body)
    status, answer = read_response(sock)
    sock.close()
    assert status == 200
    assert json.loads(answer)["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_over_the_limit_gets_413_without_a_100(
    small: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    sock = post_raw(small, user, f"Expect: 100-continue\r\nContent-Length: {LIMIT + 1}\r\n")
    status, _ = read_response(sock)
    sock.close()
    assert status == 413
    assert recorder.received == []


def test_head_is_relayed_without_a_body(api: Api, user: str, recorder: RecordingUpstream) -> None:
    response = api.http.head("/api/v1/analysis/", headers=api.bearer(user))
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""
    assert recorder.received[-1].method == "HEAD"
