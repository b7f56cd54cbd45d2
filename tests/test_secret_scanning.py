"""The secret-scanning endpoint (SPEC Part 2, "Leaked keys"), against real processes:
two sidecars on one real Redis, reports signed with a real ECDSA P-256 key."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import record_key
from sidecar.keys.store import KeyStore
from sidecar.redisconn.client import Durability
from tests.conftest import Api
from tests.harness import HASH_SECRET, SidecarProcess, remember_secret, wait_until
from tests.test_failed_auth import metric

SCAN = "/api/v1/secret-scanning/"
PATH = "/api/v1/analysis/"
KEY_ID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"
REPORT_URL = "https://github.com/octo/repo/blob/abc/config.py"


class Signer:
    """GitHub's side: an ECDSA P-256 key and its entry in a public-keys document."""

    def __init__(self, identifier: str = KEY_ID) -> None:
        self.identifier = identifier
        self.private = ec.generate_private_key(ec.SECP256R1())

    def entry(self) -> dict[str, Any]:
        pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"key_identifier": self.identifier, "key": pem.decode(), "is_current": True}

    def headers(self, body: bytes) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": self.identifier,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/json",
        }


def report(*tokens: str, url: str = REPORT_URL) -> bytes:
    items = [
        {"token": t, "type": "callcov_api_key", "url": url, "source": "content"} for t in tokens
    ]
    return orjson.dumps(items)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def scanning_pair(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory, signer: Signer
) -> Iterator[tuple[SidecarProcess, SidecarProcess]]:
    """Two sidecars on the shared Redis, both serving the endpoint."""
    directory = tmp_path_factory.mktemp("scanning")
    keys_file = directory / "github-keys.json"
    keys_file.write_bytes(orjson.dumps({"public_keys": [signer.entry()]}))
    scanning = {"enabled": True, "public_keys_file": str(keys_file)}
    first = SidecarProcess(config_for(secret_scanning=scanning), directory).start()
    second = SidecarProcess(config_for(secret_scanning=scanning), directory).start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def first_api(scanning_pair: tuple[SidecarProcess, SidecarProcess]) -> Iterator[Api]:
    client = Api(scanning_pair[0].url)
    yield client
    client.http.close()


def status(base: str, key: str) -> int:
    return httpx.get(base + PATH, headers={"X-API-Key": key}).status_code


def post(base: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(base + SCAN, content=body, headers=headers, timeout=30)


def test_a_signed_report_revokes_a_real_key_and_a_second_instance_rejects_it_within_1s(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    redis_client: redis.Redis,
) -> None:
    first, second = scanning_pair
    key = first_api.create_key(user)
    token = key["api_key"]
    unknown = keyformat.generate()
    assert status(first.url, token) == 200
    assert status(second.url, token) == 200  # now in both caches
    leaked_before = metric(first.admin_url, "sidecar_leaked_keys_total")
    body = report(token, unknown, "not-a-key")

    answer = post(first.url, body, signer.headers(body))
    started = time.monotonic()

    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {"token_raw": token, "token_type": "callcov_api_key", "label": "true_positive"},
        {"token_raw": unknown, "token_type": "callcov_api_key", "label": "false_positive"},
        {"token_raw": "not-a-key", "token_type": "callcov_api_key", "label": "false_positive"},
    ]
    wait_until(lambda: status(second.url, token) == 401, timeout=1.0, interval=0.005)
    print(f"\nsecond instance rejected the leaked key after {time.monotonic() - started:.3f} s")
    assert status(first.url, token) == 401
    listed = first_api.http.get(
        "/api/v1/api-keys/?include_expired=true", headers=first_api.bearer(user)
    ).json()["api_keys"]
    assert [(k["id"], k["is_active"], k["revoked_reason"]) for k in listed] == [
        (key["id"], False, "leaked")
    ]
    record = redis_client.hgetall(record_key(key["id"]))
    assert record[b"revoked_reason"] == b"leaked"
    assert record[b"revoked_url"] == REPORT_URL.encode()
    assert b"revoked_at" in record
    assert metric(first.admin_url, "sidecar_leaked_keys_total") == leaked_before + 1
    wait_until(lambda: "leaked key revoked" in first.logs(), timeout=5)
    line = next(li for li in first.logs().splitlines() if "leaked key revoked" in li)
    entry = orjson.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["key_prefix"] == key["key_prefix"]
    assert entry["url"] == REPORT_URL


def test_a_replayed_report_is_harmless(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    redis_client: redis.Redis,
) -> None:
    first, _ = scanning_pair
    key = first_api.create_key(user)
    body = report(key["api_key"])
    assert post(first.url, body, signer.headers(body)).status_code == 200
    record = redis_client.hgetall(record_key(key["id"]))
    leaked = metric(first.admin_url, "sidecar_leaked_keys_total")

    again = post(first.url, body, signer.headers(body))

    assert again.status_code == 200
    assert again.json()[0]["label"] == "true_positive"
    assert redis_client.hgetall(record_key(key["id"])) == record
    assert metric(first.admin_url, "sidecar_leaked_keys_total") == leaked


def test_a_key_revoked_before_is_a_true_positive_and_keeps_its_first_reason(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    redis_client: redis.Redis,
) -> None:
    first, _ = scanning_pair
    key = first_api.create_key(user)
    deleted = first_api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=first_api.bearer(user))
    assert deleted.status_code == 200
    body = report(key["api_key"])
    answer = post(first.url, body, signer.headers(body))
    assert answer.json()[0]["label"] == "true_positive"
    record = redis_client.hgetall(record_key(key["id"]))
    assert record[b"revoked_reason"] == b"revoked"
    assert b"revoked_url" not in record


@pytest.mark.parametrize(
    "forge",
    [
        "other_key",
        "tampered_body",
        "missing_signature",
        "missing_identifier",
        "unknown_identifier",
        "not_base64",
    ],
)
def test_a_bad_or_missing_signature_is_401_and_changes_nothing(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    forge: str,
) -> None:
    first, _ = scanning_pair
    token = first_api.create_key(user)["api_key"]
    body = report(token)
    headers = signer.headers(body)
    if forge == "other_key":
        headers = Signer(KEY_ID).headers(body)
    elif forge == "tampered_body":
        body = report(token, keyformat.generate())
    elif forge == "missing_signature":
        del headers["Github-Public-Key-Signature"]
    elif forge == "missing_identifier":
        del headers["Github-Public-Key-Identifier"]
    elif forge == "unknown_identifier":
        headers["Github-Public-Key-Identifier"] = "f" * 64
    elif forge == "not_base64":
        headers["Github-Public-Key-Signature"] = "%%%not base64%%%"

    answer = post(first.url, body, headers)

    assert answer.status_code == 401
    assert isinstance(answer.json()["detail"], str)
    assert status(first.url, token) == 200


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "Body is not valid JSON"),
        (b'{"token": "%s"}', 'Body must be a JSON array of {"token", "type", "url", "source"}'),
        (b'[{"token": "%s"}, {"type": "callcov_api_key"}]', 'Item 1 has no "token" string'),
        (b'[{"token": "%s"}, {"token": 12}]', 'Item 1 has no "token" string'),
        (b'[{"token": "%s"}, "just a string"]', 'Item 1 has no "token" string'),
    ],
)
def test_a_malformed_report_is_422_with_a_clear_detail_and_revokes_nothing(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    body: bytes,
    detail: str,
) -> None:
    first, _ = scanning_pair
    token = first_api.create_key(user)["api_key"]
    signed = body.replace(b"%s", token.encode()) if b"%s" in body else body
    answer = post(first.url, signed, signer.headers(signed))
    assert answer.status_code == 422
    assert answer.json() == {"detail": detail}
    assert status(first.url, token) == 200


def test_a_report_over_5_mib_is_413_declared_or_streamed(
    scanning_pair: tuple[SidecarProcess, SidecarProcess], signer: Signer
) -> None:
    first, _ = scanning_pair
    big = b"[" + b" " * (5 * 1024 * 1024) + b"]"
    declared = post(first.url, big, signer.headers(big))
    assert declared.status_code == 413
    assert "detail" in declared.json()

    def chunks() -> Iterator[bytes]:
        for _ in range(6):
            yield b" " * (1024 * 1024)

    streamed = httpx.post(first.url + SCAN, content=chunks(), headers=signer.headers(b"x"))
    assert streamed.status_code == 413


def test_the_endpoint_needs_no_credential_takes_only_post_and_serves_both_spellings(
    scanning_pair: tuple[SidecarProcess, SidecarProcess], signer: Signer, recorder: Any
) -> None:
    first, _ = scanning_pair
    body = report(keyformat.generate())
    bare = httpx.post(first.url + SCAN.rstrip("/"), content=body, headers=signer.headers(body))
    assert bare.status_code == 200
    assert bare.json()[0]["label"] == "false_positive"
    wrong = httpx.get(first.url + SCAN)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert recorder.received == []


def test_the_endpoint_is_not_served_unless_enabled(api: Api, signer: Signer) -> None:
    body = report(keyformat.generate())
    answer = api.http.post(SCAN, content=body, headers=signer.headers(body))
    assert answer.status_code == 401  # the gateway's: no credential
    assert answer.json() == {"detail": "Could not validate credentials"}


def test_a_batch_of_1000_tokens_is_answered_in_one_request(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    signer: Signer,
    user: str,
    redis_server: Any,
    redis_client: redis.Redis,
) -> None:
    first, second = scanning_pair

    async def create(count: int) -> list[str]:
        client = aioredis.Redis.from_url(redis_server.url)
        store = KeyStore(
            client,
            KeyHasher(HASH_SECRET.encode()),
            count,
            retry_after=1,
            durability=Durability(0, 1),
        )
        try:
            created = [await store.create(user, None) for _ in range(count)]
        finally:
            await client.aclose()
        return [remember_secret(c.api_key) for c in created]

    tokens = asyncio.run(create(1000))
    assert status(second.url, tokens[-1]) == 200
    body = report(*tokens)
    started = time.perf_counter()

    answer = post(first.url, body, signer.headers(body))

    elapsed = time.perf_counter() - started
    print(f"\nbatch: {len(tokens)} tokens reported and revoked in {elapsed:.3f} s end to end")
    assert answer.status_code == 200
    assert [item["label"] for item in answer.json()] == ["true_positive"] * len(tokens)
    wait_until(lambda: status(second.url, tokens[-1]) == 401, timeout=1.0, interval=0.005)
    active = redis_client.zcard(f"callcov:{{callcov-keys}}:user:{user}:all")
    assert active == len(tokens)
    assert all(status(first.url, t) == 401 for t in tokens[:20])


def test_the_config_names_every_secret_scanning_problem(tmp_path: Path) -> None:
    from sidecar.config.loading import parse
    from sidecar.config.model import ConfigError
    from tests.harness import base_config, merge

    bad_file = tmp_path / "keys.json"
    bad_file.write_text('{"public_keys": [{"key_identifier": "x", "key": "not a pem"}]}')
    raw = merge(
        base_config(redis_url="redis://127.0.0.1:1/0", upstream_url="http://127.0.0.1:1"),
        {
            "secret_scanning": {
                "enabled": True,
                "path": "/a/../b",
                "public_keys_file": str(bad_file),
                "public_keys_url": "ftp://example.com/keys",
            },
            "auth": {"failed_auth": {"requests": 0, "per_seconds": -1}},
        },
    )
    with pytest.raises(ConfigError) as error:
        parse(raw, {})
    assert error.value.problems == [
        "auth.failed_auth.per_seconds: must be greater than 0",
        "auth.failed_auth.requests: must be greater than or equal to 1",
        "secret_scanning.path: not a normalised path: /a/../b",
        "secret_scanning.public_keys_file: public_keys[0].key: not a PEM public key",
        "secret_scanning.public_keys_url: must be an http(s) URL",
    ]
    raw["secret_scanning"] = {"enabled": True}
    with pytest.raises(ConfigError) as error:
        parse(raw, {})
    assert "secret_scanning: enabled needs public_keys_file or public_keys_url" in (
        error.value.problems
    )


def test_a_reported_canary_is_a_true_positive_left_in_place(
    scanning_pair: tuple[SidecarProcess, SidecarProcess], signer: Signer, user: str
) -> None:
    """A canary found in public code is the trap working: reported, not retired."""
    from tests.test_canary import create_canary

    first, _ = scanning_pair
    canary = create_canary(str(first.config_path), user)
    body = report(canary["api_key"])
    answer = post(first.url, body, signer.headers(body))
    assert answer.json()[0]["label"] == "true_positive"
    wait_until(lambda: "canary key reported leaked" in first.logs(), timeout=5)
    assert status(first.url, canary["api_key"]) == 401
    wait_until(lambda: "canary key used" in first.logs(), timeout=5)


def test_a_key_rotated_away_is_a_true_positive_left_as_it_was(
    scanning_pair: tuple[SidecarProcess, SidecarProcess],
    first_api: Api,
    signer: Signer,
    user: str,
    redis_client: redis.Redis,
) -> None:
    """Its grace over (0 s), the old key of a rotation no longer works: it had been real."""
    first, _ = scanning_pair
    old = first_api.create_key(user)
    rotated = first_api.http.post(
        f"/api/v1/api-keys/{old['id']}/rotate",
        json={"grace_period_seconds": 0},
        headers=first_api.bearer(user),
    )
    assert rotated.status_code == 201, rotated.text
    remember_secret(rotated.json()["api_key"])
    record = redis_client.hgetall(record_key(old["id"]))
    body = report(old["api_key"])
    answer = post(first.url, body, signer.headers(body))
    assert answer.json()[0]["label"] == "true_positive"
    assert redis_client.hgetall(record_key(old["id"])) == record
    assert status(first.url, rotated.json()["api_key"]) == 200  # its successor is untouched
