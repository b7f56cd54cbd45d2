"""The admin listener: /healthz, /readyz, /metrics, against real sidecar processes."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from sidecar.keys import format as keyformat
from sidecar.keys.schema import prefix_index_key
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, free_port, wait_until

Samples = Counter[tuple[str, frozenset[tuple[str, str]]]]


def scrape(sidecar: SidecarProcess) -> tuple[Samples, str]:
    response = httpx.get(sidecar.admin_url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value  # type: ignore[assignment]
    return samples, response.text


def delta(before: Samples, after: Samples) -> dict[str, float]:
    """Changed samples as ``name{label=value,...}`` -> change."""
    changed = {}
    for key in set(before) | set(after):
        moved = after[key] - before[key]
        if moved and not key[0].endswith(("_bucket", "_sum", "_created")):
            labels = ",".join(f"{k}={v}" for k, v in sorted(key[1]))
            changed[f"{key[0]}{{{labels}}}"] = moved
    return changed


def test_metrics_move_with_a_mix_of_requests(
    api: Api, sidecar: SidecarProcess, user: str, redis_client: redis.Redis
) -> None:
    good = api.create_key(user)
    revoked = api.create_key(user)
    expired = api.create_key(user)
    api.http.get("/warm", headers={"X-API-Key": revoked["api_key"]})
    _expire_in_redis(redis_client, expired)
    before, _ = scrape(sidecar)

    # Proxied requests take >= 5 ms upstream so every one lands in the latency histogram.
    path = "/slow?seconds=0.005"
    statuses = [
        api.http.get(path, headers={"X-API-Key": good["api_key"]}).status_code,  # miss: verified
        api.http.get(path, headers={"X-API-Key": good["api_key"]}).status_code,  # hit
        api.http.get(path, headers={"X-API-Key": good["api_key"]}).status_code,  # hit
        api.http.get(path).status_code,  # missing
        api.http.get(path, headers={"X-API-Key": "sk_live_nope"}).status_code,  # malformed
        api.http.get(path, headers={"X-API-Key": keyformat.generate()}).status_code,  # unknown
        api.http.get(path, headers={"X-API-Key": expired["api_key"]}).status_code,  # expired
        api.http.get(path, headers=api.bearer(user)).status_code,  # jwt ok
        api.http.get(path, headers={"Authorization": "Bearer eyJx.eyJy.z"}).status_code,
    ]
    assert statuses == [200, 200, 200, 401, 401, 401, 401, 200, 401]
    deleted = api.http.delete(f"/api/v1/api-keys/{revoked['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    wait_until(lambda: delta(before, scrape(sidecar)[0]).get(
        "sidecar_revocation_messages_total{}") == 1, timeout=2)  # fmt: skip
    assert api.http.get("/a", headers={"X-API-Key": revoked["api_key"]}).status_code == 401

    after, text = scrape(sidecar)
    assert delta(before, after) == {
        "sidecar_requests_total{route=proxy,status=200}": 4,
        "sidecar_requests_total{route=proxy,status=401}": 6,
        "sidecar_requests_total{route=api_keys,status=200}": 1,
        "sidecar_auth_total{method=api_key,outcome=ok}": 3,
        "sidecar_auth_total{method=none,outcome=missing}": 1,
        "sidecar_auth_total{method=api_key,outcome=malformed}": 1,
        "sidecar_auth_total{method=api_key,outcome=unknown}": 1,
        "sidecar_auth_total{method=api_key,outcome=expired}": 1,
        "sidecar_auth_total{method=api_key,outcome=revoked}": 1,
        "sidecar_auth_total{method=jwt,outcome=ok}": 1,
        "sidecar_auth_total{method=jwt,outcome=jwt_invalid}": 1,
        "sidecar_auth_seconds_count{}": 10,
        "sidecar_upstream_seconds_count{}": 4,
        # good: 1 miss, then 2 hits; unknown, expired and revoked (evicted) ask Redis once each.
        "sidecar_key_cache_total{result=hit}": 2,
        "sidecar_key_cache_total{result=miss}": 4,
        "sidecar_revocation_messages_total{}": 1,
    }
    assert after[("sidecar_in_flight_requests", frozenset())] == 0
    for secret_or_user in (good["api_key"], good["key_prefix"], user, "/slow"):
        assert secret_or_user not in text


def test_public_and_owned_routes_are_counted_apart(api: Api, sidecar: SidecarProcess) -> None:
    before, _ = scrape(sidecar)
    assert api.http.get("/api/v1/auth/login").status_code == 200
    assert api.http.get("/api/v1/api-keys/").status_code == 401
    moved = delta(before, scrape(sidecar)[0])
    assert moved["sidecar_requests_total{route=public,status=200}"] == 1
    assert moved["sidecar_requests_total{route=api_keys,status=401}"] == 1
    assert "sidecar_auth_seconds_count{}" not in moved  # neither went through the gateway's auth


def _expire_in_redis(client: redis.Redis, key: dict[str, Any]) -> None:
    """Give a key an expiry in the past (the API cannot create expiring keys yet)."""
    index = prefix_index_key(key["key_prefix"])
    for field, raw in client.hgetall(index).items():
        entry = orjson.loads(raw)
        if entry["id"] == key["id"]:
            entry["expires_at"] = 1.0
            client.hset(index, field, orjson.dumps(entry))


def test_in_flight_requests_are_counted(api: Api, sidecar: SidecarProcess, user: str) -> None:
    headers = api.bearer(user)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            httpx.get(sidecar.url + "/slow?seconds=1", headers=headers, timeout=10).status_code
        )
    )
    gauge = ("sidecar_in_flight_requests", frozenset())
    baseline = scrape(sidecar)[0][gauge]
    worker.start()
    wait_until(lambda: scrape(sidecar)[0][gauge] == baseline + 1, timeout=5)
    worker.join()
    assert result == [200]
    assert scrape(sidecar)[0][gauge] == baseline


def test_health_lives_only_on_the_admin_listener(sidecar: SidecarProcess) -> None:
    assert httpx.get(sidecar.admin_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(sidecar.admin_url + "/readyz").json() == {"status": "ready"}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(sidecar.url + path).status_code == 401  # an ordinary, guarded path


def test_readiness_follows_redis(config_for: Any, spawn: Any, tmp_path: Path) -> None:
    own = RedisProcess(tmp_path)
    own.start()
    try:
        process: SidecarProcess = spawn(config_for(redis={"url": own.url}))
        ready = process.admin_url + "/readyz"
        api = Api(process.url)
        assert httpx.get(ready).status_code == 200
        before, _ = scrape(process)

        own.stop()
        wait_until(lambda: httpx.get(ready).status_code == 503, timeout=5)
        assert httpx.get(ready).json() == {
            "status": "unready",
            "problems": ["redis unreachable (ConnectionError)"],
        }
        unseen = api.http.get("/a", headers={"X-API-Key": keyformat.generate()})
        assert unseen.status_code == 503
        assert unseen.headers["retry-after"] == "3"
        assert httpx.get(process.admin_url + "/healthz").status_code == 200  # alive all along
        moved = delta(before, scrape(process)[0])
        assert moved["sidecar_auth_total{method=api_key,outcome=store_unavailable}"] == 1
        assert moved["sidecar_redis_errors_total{component=key_store}"] >= 1
        wait_until(  # the revocation subscription notices on its own, within seconds
            lambda: (
                delta(before, scrape(process)[0]).get(
                    "sidecar_redis_errors_total{component=revocations}", 0
                )
                >= 1
            ),
            timeout=10,
        )

        own.start()
        wait_until(lambda: httpx.get(ready).status_code == 200, timeout=10)
        assert httpx.get(ready).json() == {"status": "ready"}
        key = api.create_key("readiness-user")  # the restarted Redis starts empty
        assert api.http.get("/a", headers={"X-API-Key": key["api_key"]}).status_code == 200
        api.http.close()
    finally:
        own.stop()


def test_readiness_needs_a_connectable_upstream(config_for: Any, spawn: Any) -> None:
    process: SidecarProcess = spawn(config_for(upstream={"url": f"http://127.0.0.1:{free_port()}"}))
    response = httpx.get(process.admin_url + "/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unready", "problems": ["upstream not connectable"]}
    token = make_token("anyone")
    proxied = httpx.get(process.url + "/a", headers={"Authorization": f"Bearer {token}"})
    assert proxied.status_code == 502
