"""The secret-scanning endpoint under unauthenticated load, against a real sidecar: what
cannot be a valid report is refused before its body is read, at most
``max_concurrent_reports`` bodies are read at once (503 + Retry-After beyond, and it
recovers), and a body slower than ``body_timeout_seconds`` gets 408."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sidecar.keys import format as keyformat
from tests.harness import SidecarProcess, read_until_closed
from tests.test_secret_scanning import SCAN, Signer, report

CAP = 2
BODY_TIMEOUT = 5.0
DEADLINE = 20.0  # how long a test waits for an answer or a close before it fails


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def scanning(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory, signer: Signer
) -> Iterator[SidecarProcess]:
    directory = tmp_path_factory.mktemp("scanning-limits")
    keys_file = directory / "github-keys.json"
    keys_file.write_bytes(orjson.dumps({"public_keys": [signer.entry()]}))
    config = config_for(
        secret_scanning={
            "enabled": True,
            "public_keys_file": str(keys_file),
            "max_concurrent_reports": CAP,
            "body_timeout_seconds": BODY_TIMEOUT,
        }
    )
    process = SidecarProcess(config, directory).start()
    yield process
    process.stop()


def _head(headers: dict[str, str], length: int) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {SCAN} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {length}\r\n\r\n".encode()


def _open(sidecar: SidecarProcess, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", sidecar.config["server"]["port"]))
    sock.settimeout(DEADLINE)
    sock.sendall(data)
    return sock


def _well_formed(signer: Signer) -> dict[str, str]:
    """Headers a report may carry: a known identifier and a real signature, of another
    body (the bodies sent here are never signed)."""
    return signer.headers(b"some other body")


@pytest.mark.parametrize(
    "forge", ["no_signature", "no_identifier", "not_base64", "not_der", "unknown_identifier"]
)
def test_a_report_that_cannot_be_valid_is_refused_before_its_body(
    scanning: SidecarProcess, signer: Signer, forge: str
) -> None:
    headers = _well_formed(signer)
    if forge == "no_signature":
        del headers["Github-Public-Key-Signature"]
    elif forge == "no_identifier":
        del headers["Github-Public-Key-Identifier"]
    elif forge == "not_base64":
        headers["Github-Public-Key-Signature"] = "%%%not base64%%%"
    elif forge == "not_der":
        headers["Github-Public-Key-Signature"] = base64.b64encode(b"x" * 70).decode()
    elif forge == "unknown_identifier":
        headers["Github-Public-Key-Identifier"] = "f" * 64
    with _open(scanning, _head(headers, 5 * 1024 * 1024 - 1)) as sock:  # no body sent
        answer = read_until_closed(sock, DEADLINE)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b'{"detail":' in answer


def test_a_declared_oversized_report_is_413_and_the_connection_closed(
    scanning: SidecarProcess, signer: Signer
) -> None:
    with _open(scanning, _head(_well_formed(signer), 6 * 1024 * 1024)) as sock:
        answer = read_until_closed(sock, DEADLINE)  # not kept open to drain 6 MiB (held before too)
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def test_beyond_the_cap_reports_get_503_with_retry_after_then_it_recovers(
    scanning: SidecarProcess, signer: Signer
) -> None:
    honest = report(keyformat.generate())
    held = [_open(scanning, _head(_well_formed(signer), 1000) + b"[" * 10) for _ in range(CAP)]
    try:
        busy = None
        deadline = time.monotonic() + DEADLINE
        while busy is None and time.monotonic() < deadline:
            answer = httpx.post(
                scanning.url + SCAN, content=honest, headers=signer.headers(honest), timeout=10
            )
            if answer.status_code == 503:
                busy = answer
        assert busy is not None, "the cap was never reached"
        assert int(busy.headers["retry-after"]) > 0
        assert busy.headers["connection"] == "close"
        assert "detail" in busy.json()
        # The held bodies never complete: each is cut after body_timeout_seconds, with 408.
        for sock in held:
            assert read_until_closed(sock, DEADLINE).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in held:
            sock.close()
    recovered = None
    deadline = time.monotonic() + DEADLINE
    while recovered != 200 and time.monotonic() < deadline:
        recovered = httpx.post(
            scanning.url + SCAN, content=honest, headers=signer.headers(honest), timeout=10
        ).status_code
    assert recovered == 200


def test_a_signed_report_still_works_and_a_chunked_one_is_counted_as_it_comes(
    scanning: SidecarProcess, signer: Signer
) -> None:
    body = report(keyformat.generate())

    def pieces() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    answer = httpx.post(
        scanning.url + SCAN, content=pieces(), headers=signer.headers(body), timeout=10
    )
    assert answer.status_code == 200
    assert answer.json()[0]["label"] == "false_positive"
