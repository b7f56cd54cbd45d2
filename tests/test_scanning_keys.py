"""Secret-scanning signature keys: the document's shape, the check, and fetching from
``secret_scanning.public_keys_url`` (a real HTTP server) at most once a minute."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidecar.api.scanning_source import REFRESH_SECONDS, ScanningKeySource
from sidecar.config.model import SecretScanningConfig
from sidecar.core.errors import ScanningKeysUnavailable
from sidecar.crypto import scanning_signatures as scanning_keys
from tests.harness import ServerThread
from tests.test_failed_auth import Clock
from tests.test_secret_scanning import Signer


class KeysServer:
    """Serves a public-keys document and counts the requests for it."""

    def __init__(self) -> None:
        self.document = b'{"public_keys": []}'
        self.status = 200
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.requests += 1
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.document})


@pytest.fixture
def keys_server() -> Iterator[tuple[KeysServer, str]]:
    app = KeysServer()
    server = ServerThread(app).start()
    yield app, server.url + "/meta/public_keys/secret_scanning"
    server.stop()


def test_a_signature_verifies_only_for_its_body_and_key() -> None:
    signer = Signer("k1")
    keys = scanning_keys.parse(orjson.dumps({"public_keys": [signer.entry()]}))
    signature = signer.headers(b"[]")["Github-Public-Key-Signature"]
    assert scanning_keys.signature_valid(keys["k1"], signature, b"[]")
    assert not scanning_keys.signature_valid(keys["k1"], signature, b"[ ]")
    other = Signer("k1").headers(b"[]")["Github-Public-Key-Signature"]
    assert not scanning_keys.signature_valid(keys["k1"], other, b"[]")
    assert not scanning_keys.signature_valid(keys["k1"], "not base64!", b"[]")
    assert not scanning_keys.signature_valid(keys["k1"], base64.b64encode(b"x").decode(), b"[]")


def _pem_of(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()  # fmt: skip


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (b"nope", "not valid JSON"),
        (b"[]", 'must be an object with a "public_keys" array'),
        (b'{"public_keys": ["x"]}', "public_keys[0]: must be an object"),
        (b'{"public_keys": [{"key": "x"}]}', "public_keys[0].key_identifier: must be a non-empty"),
        (b'{"public_keys": [{"key_identifier": "a"}]}', "public_keys[0].key: must be a PEM string"),
        (
            orjson.dumps({"public_keys": [{"key_identifier": "a", "key": "-----BEGIN"}]}),
            "public_keys[0].key: not a PEM public key",
        ),
        (
            orjson.dumps(
                {
                    "public_keys": [
                        {
                            "key_identifier": "a",
                            "key": _pem_of(ec.generate_private_key(ec.SECP384R1())),
                        }
                    ]
                }
            ),
            "public_keys[0].key: must be an ECDSA P-256 key",
        ),
        (
            orjson.dumps(
                {
                    "public_keys": [
                        {
                            "key_identifier": "a",
                            "key": _pem_of(ed25519.Ed25519PrivateKey.generate()),
                        }
                    ]
                }
            ),
            "public_keys[0].key: must be an ECDSA P-256 key",
        ),
    ],
)
def test_a_malformed_document_says_what_is_wrong(document: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("[", r"\[").replace("]", r"\]")):
        scanning_keys.parse(document)


def test_an_unknown_identifier_fetches_the_url_at_most_once_a_minute(
    keys_server: tuple[KeysServer, str],
) -> None:
    app, url = keys_server
    first, later = Signer("first"), Signer("later")
    app.document = orjson.dumps({"public_keys": [first.entry()]})
    clock = Clock()
    source = ScanningKeySource(SecretScanningConfig(public_keys_url=url), clock=clock)

    async def run() -> None:
        assert await source.key("first") is not None
        assert app.requests == 1
        assert await source.key("first") is not None  # kept: no fetch for a known key
        app.document = orjson.dumps({"public_keys": [first.entry(), later.entry()]})
        assert await source.key("later") is None  # not refetched within the minute
        assert await asyncio.gather(*(source.key("made-up") for _ in range(5))) == [None] * 5
        assert app.requests == 1
        clock.now += REFRESH_SECONDS
        assert await asyncio.gather(*(source.key("later") for _ in range(5))) != [None] * 5
        assert app.requests == 2  # concurrent misses share one fetch
        assert await source.key("first") is not None
        await source.close()

    asyncio.run(run())


def test_a_url_that_cannot_be_read_is_503_not_401_for_an_unknown_identifier(
    keys_server: tuple[KeysServer, str], tmp_path: Path
) -> None:
    app, url = keys_server
    app.status = 500
    clock = Clock()
    key_file = tmp_path / "keys.json"
    key_file.write_bytes(orjson.dumps({"public_keys": [Signer("from-file").entry()]}))
    config = SecretScanningConfig(public_keys_url=url, public_keys_file=str(key_file))
    source = ScanningKeySource(config, clock=clock)

    async def run() -> None:
        with pytest.raises(ScanningKeysUnavailable):
            await source.key("unknown")
        assert await source.key("from-file") is not None  # known keys keep working
        app.status = 200
        clock.now += REFRESH_SECONDS
        assert await source.key("unknown") is None  # the URL answered: really unknown
        await source.close()

    asyncio.run(run())
