"""The upstream connection pool and https: a pooled connection the upstream dropped is
retried once only for requests without a body; https upstreams are verified."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import socket
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config.model import UpstreamConfig
from sidecar.proxy.upstream import Exchange, UpstreamClient
from tests.conftest import Api
from tests.harness import ServerThread
from tests.upstream_app import RecordingUpstream, pattern


class DroppingUpstream:
    """Answers the first request on each connection, then drops the connection when
    the second one arrives, without a byte of response: a keep-alive connection the
    server gave up on just as the client reused it."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    answers: int | None = 1  # per connection; the next request is dropped (None: never)

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            data = b""
            answered = 0
            while True:
                while b"\r\n\r\n" not in data:
                    piece = sock.recv(65536)
                    if not piece:
                        return
                    data += piece
                head, _, data = data.partition(b"\r\n\r\n")
                self.requests.append(head.split(b" ")[0])
                if answered == self.answers:
                    return  # closes the socket without answering
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                answered += 1

    def close(self) -> None:
        self._listener.close()


class KeepAliveUpstream(DroppingUpstream):
    """Answers every request on a connection and keeps it open."""

    answers = None


async def _get(client: UpstreamClient) -> int:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    exchange = Exchange([])
    head = client.request_head("GET", b"/", b"", [])
    await client.forward(
        method="GET", head=head, headers=[], content_length=None, chunked=False,
        receive=receive, send=send, exchange=exchange,
    )  # fmt: skip
    assert sent[-1]["body"] == b"ok"
    return exchange.status


def test_a_pooled_connection_idle_too_long_is_dropped_rather_than_reused() -> None:
    """Reusing a connection the upstream may be closing (its keep-alive timeout) would
    race it; the pool drops connections idle longer than ``idle_seconds`` instead."""
    upstream = KeepAliveUpstream()

    async def scenario() -> list[int]:
        client = UpstreamClient(UpstreamConfig(url=upstream.url), 1024, idle_seconds=0.3)
        await client.start()
        counts = []
        for pause in (0.0, 0.0, 0.5, 0.0):
            await asyncio.sleep(pause)  # the idle time itself is what is tested
            assert await _get(client) == 200
            counts.append(upstream.connections)
        await client.close()
        return counts

    try:
        assert asyncio.run(scenario()) == [1, 1, 2, 2]
    finally:
        upstream.close()


@pytest.fixture
def dropping() -> Iterator[DroppingUpstream]:
    server = DroppingUpstream()
    yield server
    server.close()


def test_a_dropped_pooled_connection_is_retried_once_only_without_a_body(
    dropping: DroppingUpstream, config_for: Any, spawn: Any, user: str
) -> None:
    process = spawn(config_for(upstream={"url": dropping.url, "pool_size": 1}))
    client = Api(process.url)
    auth = client.bearer(user)
    assert client.http.get("/a", headers=auth).status_code == 200  # connection 1
    assert client.http.get("/b", headers=auth).status_code == 200  # 1 dropped: retried on 2
    assert client.http.get("/b", headers=auth).status_code == 200  # 2 dropped: retried on 3
    # A body may have been acted on: no retry, and the dropped connection is not reused.
    assert client.http.post("/c", headers=auth, content=b"data").status_code == 502
    assert client.http.get("/d", headers=auth).status_code == 200  # connection 4
    assert dropping.requests == [b"GET"] * 5 + [b"POST"] + [b"GET"]
    assert dropping.connections == 4


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sidecar test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream.crt", directory / "upstream.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_upstream(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RecordingUpstream, ServerThread, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    app = RecordingUpstream()
    server = ServerThread(app, ssl_certfile=str(cert), ssl_keyfile=str(key)).start()
    yield app, server, cert
    server.stop()


def test_an_https_upstream_is_verified_and_streams_both_ways(
    tls_upstream: tuple[RecordingUpstream, ServerThread, Path],
    config_for: Any,
    spawn: Any,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, server, cert = tls_upstream
    assert server.url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the sidecar trusts it, nothing else
    client = Api(spawn(config_for(upstream={"url": server.url})).url)
    upload = list(pattern(3 * 1024 * 1024 + 7))
    response = client.http.post("/up", content=iter(upload), headers=client.bearer(user))
    assert response.status_code == 200, response.text
    assert response.json()["body_sha256"] == hashlib.sha256(b"".join(upload)).hexdigest()
    assert app.received[-1].path == "/up"
    total = 5 * 1024 * 1024 + 3
    download = client.http.get(f"/download?bytes={total}", headers=client.bearer(user))
    assert download.status_code == 200
    assert download.content == b"".join(pattern(total))


def test_an_https_upstream_with_an_untrusted_certificate_gets_502(
    tls_upstream: tuple[RecordingUpstream, ServerThread, Path],
    config_for: Any,
    spawn: Any,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, server, _ = tls_upstream
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    app.reset()
    client = Api(spawn(config_for(upstream={"url": server.url})).url)
    response = client.http.get("/never", headers=client.bearer(user))
    assert response.status_code == 502
    assert app.received == []
