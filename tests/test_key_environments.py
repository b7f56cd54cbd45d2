"""SPEC Part 2 "Test keys": environment on create, sk_test_ keys, limits per environment,
the environment header and upstream.test_url, against real sidecars, upstreams, Redis."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from sidecar.config import loading as config_module
from sidecar.config.model import ConfigError
from sidecar.keys import format as keyformat
from tests.conftest import Api
from tests.harness import ServerThread, SidecarProcess, free_port, remember_secret
from tests.lifecycle_helpers import PATH, user_state
from tests.upstream_app import RecordingUpstream

LIMIT_MESSAGE = "Maximum number of API keys (10) reached. Please expire unused keys."


@pytest.fixture(scope="module")
def test_upstream() -> Iterator[tuple[RecordingUpstream, ServerThread]]:
    app = RecordingUpstream()
    server = ServerThread(app).start()
    yield app, server
    server.stop()


@pytest.fixture(scope="module")
def split(
    config_for: Any,
    test_upstream: tuple[RecordingUpstream, ServerThread],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SidecarProcess]:
    """A sidecar whose test keys go to their own upstream."""
    config = config_for(upstream={"test_url": test_upstream[1].url})
    process = SidecarProcess(config, tmp_path_factory.mktemp("split")).start()
    yield process
    process.stop()


def create(api: Api, user: str, **body: Any) -> httpx.Response:
    response = api.http.post("/api/v1/api-keys/", json=body, headers=api.bearer(user))
    if response.status_code == 201:
        remember_secret(response.json()["api_key"])
    return response


def test_a_test_key_has_the_documented_shape(api: Api, user: str) -> None:
    response = create(api, user, environment="test", description="ci")
    assert response.status_code == 201
    body = response.json()
    key = body["api_key"]
    assert body["environment"] == "test"
    assert key.startswith("sk_test_") and len(key) == 56
    expected = keyformat.base62(zlib.crc32(key[:-6].encode("ascii")), 6)
    assert key[-6:] == expected
    assert body["key_prefix"] == key[:14]
    assert keyformat.parse(key) is not None
    [item] = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()["api_keys"]
    assert item["environment"] == "test"


def test_explicit_live_is_the_default(api: Api, user: str) -> None:
    body = create(api, user, environment="live").json()
    assert body["environment"] == "live" and body["api_key"].startswith("sk_live_")


@pytest.mark.parametrize("environment", ["prod", "LIVE", "", None, 1, ["test"]])
def test_unknown_environments_get_422_and_write_nothing(
    api: Api, user: str, redis_client: redis.Redis, environment: Any
) -> None:
    response = create(api, user, environment=environment)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "environment"]
    assert user_state(redis_client, user) == {}


def test_the_limit_holds_per_environment(api: Api, user: str) -> None:
    for environment in ("live", "test"):
        for _ in range(10):
            assert create(api, user, environment=environment).status_code == 201
        refused = create(api, user, environment=environment)
        assert (refused.status_code, refused.json()) == (400, {"detail": LIMIT_MESSAGE})
    listed = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert listed["total"] == 20


def test_forwarded_requests_carry_the_key_environment(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    for environment in ("live", "test"):
        key = create(api, user, environment=environment).json()
        spoofed = {"X-API-Key": key["api_key"], "X-CallCov-Key-Environment": "forged"}
        assert api.http.get(PATH, headers=spoofed).status_code == 200
        seen = recorder.received[-1]
        assert [v for k, v in seen.headers if k == "x-callcov-key-environment"] == [environment]
    assert api.http.get(PATH, headers=api.bearer(user)).status_code == 200
    assert recorder.received[-1].header("x-callcov-key-environment") is None  # JWT: none


def test_test_keys_go_to_the_test_upstream(
    split: SidecarProcess,
    user: str,
    recorder: RecordingUpstream,
    test_upstream: tuple[RecordingUpstream, ServerThread],
) -> None:
    api = Api(split.url)
    test_recorder = test_upstream[0]
    test_recorder.reset()
    live = create(api, user).json()
    test = create(api, user, environment="test").json()
    assert api.http.get(PATH + "?k=test", headers={"X-API-Key": test["api_key"]}).status_code == 200
    assert api.http.get(PATH + "?k=live", headers={"X-API-Key": live["api_key"]}).status_code == 200
    assert api.http.get(PATH + "?k=jwt", headers=api.bearer(user)).status_code == 200
    assert [r.query for r in test_recorder.received] == ["k=test"]
    assert [r.query for r in recorder.received] == ["k=live", "k=jwt"]
    assert test_recorder.received[0].header("x-callcov-key-environment") == "test"
    assert httpx.get(split.admin_url + "/readyz").json() == {"status": "ready"}
    api.http.close()


def test_readiness_needs_the_test_upstream_too(config_for: Any, spawn: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    process: SidecarProcess = spawn(config_for(upstream={"test_url": dead}))
    response = httpx.get(process.admin_url + "/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unready", "problems": ["test upstream not connectable"]}
    api = Api(process.url)
    user = "test-upstream-down"
    test = create(api, user, environment="test").json()
    assert api.http.get(PATH, headers={"X-API-Key": test["api_key"]}).status_code == 502
    live = create(api, user).json()
    assert api.http.get(PATH, headers={"X-API-Key": live["api_key"]}).status_code == 200
    api.http.close()


def test_a_bad_test_url_is_a_config_error(config_for: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        config_module.parse(config_for(upstream={"test_url": "ftp://nowhere"}), {})
    assert raised.value.problems == [
        "upstream.test_url: must be an http:// or https:// URL with a host"
    ]
