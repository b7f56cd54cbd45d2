"""Redis killed and restarted under a running sidecar (its own Redis, not the shared one).

While Redis is down: API keys that cannot be verified get 503 with Retry-After (never
401, never 200); a key verified within ``stale_window_seconds`` keeps working for that
window and no longer; JWTs keep working. When Redis is back (same port, same data),
everything recovers without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidecar.keys import format as keyformat
from tests.conftest import Api
from tests.harness import RedisProcess, ServerThread, SidecarProcess, base_config, merge, wait_until
from tests.upstream_app import RecordingUpstream

PATH = "/api/v1/analysis/"
STALE_WINDOW = 2.0
RETRY_AFTER = 3


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path, persistent=True) as server:
        yield server


@pytest.fixture
def outage_sidecar(
    own_redis: RedisProcess, upstream: tuple[RecordingUpstream, ServerThread], tmp_path: Path
) -> Iterator[SidecarProcess]:
    config = merge(
        base_config(redis_url=own_redis.url, upstream_url=upstream[1].url),
        {
            "redis": {"retry_after_seconds": RETRY_AFTER},
            "auth": {"api_keys": {"stale_window_seconds": STALE_WINDOW}},
        },
    )
    process = SidecarProcess(config, tmp_path).start()
    yield process
    process.stop()


def call(base: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(base + PATH, headers=headers, timeout=30)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str)


def test_redis_killed_and_restarted_mid_test(
    outage_sidecar: SidecarProcess, own_redis: RedisProcess, recorder: RecordingUpstream, user: str
) -> None:
    api = Api(outage_sidecar.url)
    recent = api.create_key(user)
    idle = api.create_key(user)  # exists, but this instance never verified it
    revoked = api.create_key(user)
    jwt = api.bearer(user)
    assert call(api.base, {"X-API-Key": revoked["api_key"]}).status_code == 200
    api.http.delete(f"/api/v1/api-keys/{revoked['id']}", headers=jwt)
    wait_until(lambda: call(api.base, {"X-API-Key": revoked["api_key"]}).status_code == 401, 1)
    # Before the call that verifies the key: no later than the sidecar's own clock
    # starts its stale window, so both bounds checked below hold.
    verified_at = time.monotonic()
    assert call(api.base, {"X-API-Key": recent["api_key"]}).status_code == 200

    own_redis.stop()  # SIGKILL

    # Verified moments ago: still served, within the stale window.
    assert call(api.base, {"X-API-Key": recent["api_key"]}).status_code == 200
    assert time.monotonic() - verified_at < STALE_WINDOW
    # JWTs do not need Redis.
    assert call(api.base, jwt).status_code == 200
    assert call(api.base, {"X-API-Key": "sk_live_malformed"}).status_code == 401
    recorder.reset()
    # Never verified here: cannot be vouched for, so 503 (not 401, not 200).
    assert_unavailable(call(api.base, {"X-API-Key": idle["api_key"]}))
    assert_unavailable(call(api.base, {"Authorization": f"Bearer {idle['api_key']}"}))
    assert_unavailable(call(api.base, {"X-API-Key": keyformat.generate()}))
    assert recorder.received == []
    # The keys API answers its 503s with the configured Retry-After too.
    assert_unavailable(api.http.post("/api/v1/api-keys/", headers=jwt, json={}))
    assert_unavailable(api.http.get("/api/v1/api-keys/", headers=jwt))
    assert_unavailable(api.http.delete(f"/api/v1/api-keys/{idle['id']}", headers=jwt))
    # Known to be revoked: still refused.
    assert call(api.base, {"X-API-Key": revoked["api_key"]}).status_code == 401
    # The stale window is bounded: once it is over, the recent key is refused too.
    wait_until(
        lambda: call(api.base, {"X-API-Key": recent["api_key"]}).status_code == 503,
        timeout=STALE_WINDOW + 5,
    )
    assert time.monotonic() - verified_at >= STALE_WINDOW
    assert_unavailable(call(api.base, {"X-API-Key": recent["api_key"]}))
    assert call(api.base, jwt).status_code == 200

    own_redis.start()  # same port, same (persisted) data; the sidecar is not restarted

    wait_until(lambda: call(api.base, {"X-API-Key": idle["api_key"]}).status_code == 200, 10)
    assert call(api.base, {"X-API-Key": recent["api_key"]}).status_code == 200
    assert call(api.base, {"X-API-Key": revoked["api_key"]}).status_code == 401
    assert call(api.base, jwt).status_code == 200
    # And revocation propagates again through the re-established feed.
    assert api.http.delete(f"/api/v1/api-keys/{idle['id']}", headers=jwt).status_code == 200
    wait_until(lambda: call(api.base, {"X-API-Key": idle["api_key"]}).status_code == 401, 1)
