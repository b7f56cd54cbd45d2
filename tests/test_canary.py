"""Canary keys (SPEC Part 2, "Canary keys"): made by the CLI, indistinguishable from an
unknown key to whoever uses one, reported to the operator, outside limits and listings."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from tests.conftest import Api
from tests.harness import HASH_SECRET, RedisProcess, SidecarProcess, remember_secret, wait_until
from tests.test_cli import cli, ok
from tests.test_failed_auth import limited_config, metric

PATH = "/api/v1/analysis/"


def create_canary(config_path: str, user: str) -> dict[str, Any]:
    created: dict[str, Any] = ok(
        "--config", config_path, "keys", "create", "--user", user, "--canary"
    )
    remember_secret(created["api_key"])
    return created


async def canaries_in_process(redis_url: str, user: str, count: int) -> list[str]:
    client = aioredis.Redis.from_url(redis_url)
    store = KeyStore(client, KeyHasher(HASH_SECRET.encode()), 10, retry_after=1)
    try:
        return [
            remember_secret((await store.create_canary(user, None)).api_key) for _ in range(count)
        ]
    finally:
        await client.aclose()


def canary_hits(sidecar: SidecarProcess) -> float:
    return metric(sidecar.admin_url, "sidecar_canary_hits_total")


def test_a_canary_key_gets_exactly_an_unknown_keys_answer_and_is_reported(
    sidecar: SidecarProcess, user: str, recorder: Any
) -> None:
    canary = create_canary(str(sidecar.config_path), user)
    assert keyformat.parse(canary["api_key"]) is not None  # looks and verifies like a key
    assert canary["canary"] is True
    hits = canary_hits(sidecar)

    used = httpx.post(
        sidecar.url + PATH + "?x=1", headers={"X-API-Key": canary["api_key"]}, content=b"{}"
    )
    unknown = httpx.post(
        sidecar.url + PATH + "?x=1", headers={"X-API-Key": keyformat.generate()}, content=b"{}"
    )

    assert (used.status_code, used.content) == (unknown.status_code, unknown.content)
    assert used.status_code == 401
    drop = {"x-request-id", "date"}
    assert {k: v for k, v in used.headers.items() if k not in drop} == {
        k: v for k, v in unknown.headers.items() if k not in drop
    }
    assert recorder.received == []
    assert canary_hits(sidecar) == hits + 1
    wait_until(lambda: "canary key used" in sidecar.logs(), timeout=5)
    warnings = [
        orjson.loads(line)
        for line in sidecar.logs().splitlines()
        if "canary key used" in line and canary["key_prefix"] in line
    ]
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning["level"] == "WARNING"
    assert warning["key_prefix"] == canary["key_prefix"]
    assert warning["client"] == "127.0.0.1"
    assert warning["method"] == "POST"
    assert warning["path"] == PATH


def test_a_canary_costs_the_same_redis_lookup_as_an_unknown_key(
    sidecar: SidecarProcess, user: str, redis_client: redis.Redis, redis_server: RedisProcess
) -> None:
    redis_url = redis_server.url
    canary = create_canary(str(sidecar.config_path), user)

    def hgets() -> int:
        stats: dict[str, Any] = redis_client.info("commandstats")
        return int(stats.get("cmdstat_hget", {}).get("calls", 0))

    def lookups_for(key: str) -> int:
        before = hgets()
        httpx.get(sidecar.url + PATH, headers={"X-API-Key": key})
        return hgets() - before

    assert lookups_for(canary["api_key"]) == lookups_for(keyformat.generate()) == 1

    # Reported, not asserted (timings on a shared machine are noise): the median time of
    # first uses of canaries and of unknown keys, interleaved, on one connection.
    canaries = asyncio.run(canaries_in_process(redis_url, user, 20))
    timings: dict[str, list[float]] = {"canary": [], "unknown": []}
    with httpx.Client(base_url=sidecar.url) as client:
        for key in canaries:
            for kind, value in (("canary", key), ("unknown", keyformat.generate())):
                started = time.perf_counter()
                client.get(PATH, headers={"X-API-Key": value})
                timings[kind].append(time.perf_counter() - started)
    medians = {kind: round(statistics.median(t) * 1000, 2) for kind, t in timings.items()}
    print(f"\nfirst use, median ms: {medians}")


def test_canaries_are_outside_the_limit_and_listed_only_with_canary(
    sidecar: SidecarProcess, api: Api, user: str
) -> None:
    config_path = str(sidecar.config_path)
    canaries = [create_canary(config_path, user) for _ in range(3)]
    real = [api.create_key(user) for _ in range(10)]  # the full limit, canaries aside
    listed = api.http.get("/api/v1/api-keys/?include_expired=true", headers=api.bearer(user))
    assert {k["id"] for k in listed.json()["api_keys"]} == {k["id"] for k in real}
    plain = ok("--config", config_path, "keys", "list", "--user", user, "--include-expired")
    assert {k["id"] for k in plain["api_keys"]} == {k["id"] for k in real}
    only = ok("--config", config_path, "keys", "list", "--user", user, "--canary")
    assert [k["id"] for k in only["api_keys"]] == [c["id"] for c in reversed(canaries)]
    assert only["total"] == 3
    assert all("api_key" not in k and "hash" not in k for k in only["api_keys"])


def test_a_revoked_canary_is_retired(sidecar: SidecarProcess, user: str) -> None:
    """Revoking a canary by id (the operator's) makes it a plain revoked key: still 401,
    no longer reported."""
    config_path = str(sidecar.config_path)
    canary = create_canary(config_path, user)
    ok("--config", config_path, "keys", "revoke", canary["id"])
    hits = canary_hits(sidecar)
    used = httpx.get(sidecar.url + PATH, headers={"X-API-Key": canary["api_key"]})
    assert used.status_code == 401
    assert canary_hits(sidecar) == hits
    only = ok("--config", config_path, "keys", "list", "--user", user, "--canary")
    assert only["api_keys"] == []
    with_expired = ok(
        "--config", config_path, "keys", "list", "--user", user, "--canary", "--include-expired"
    )
    assert [k["revoked_reason"] for k in with_expired["api_keys"]] == ["revoked"]


@pytest.mark.parametrize(
    "extra", [["--environment", "test"], ["--expires-at", "2099-01-01T00:00:00Z"]]
)
def test_a_canary_is_a_live_key_that_never_expires(
    sidecar: SidecarProcess, user: str, extra: list[str]
) -> None:
    result = cli(
        "--config", str(sidecar.config_path), "keys", "create", "--user", user, "--canary", *extra
    )
    assert result.returncode == 2
    assert "a --canary key is a live key that never expires" in result.stderr


def test_under_the_failed_auth_limit_canary_and_revoked_keys_answer_as_unknown_keys(
    own_redis: RedisProcess, upstream: Any, spawn: Any, user: str
) -> None:
    """Issue 24 row 6: a canary (or revoked) key this instance has cached must not answer
    401 while an unknown key gets 429; over the limit every key but a working one gets
    the same 429, and the canary is still reported."""
    sidecar: SidecarProcess = spawn(limited_config(own_redis.url, upstream[1].url, requests=3))
    api = Api(sidecar.url)
    canary = create_canary(str(sidecar.config_path), user)
    key = api.create_key(user)
    known_unknown = keyformat.generate()

    def get(value: str) -> httpx.Response:
        return httpx.get(sidecar.url + PATH, headers={"X-API-Key": value})

    assert get(key["api_key"]).status_code == 200
    deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    # Three failures, each leaving its key in a cache: the canary and the revoked key
    # among the verified keys, the unknown one among the unknown.
    assert [get(k).status_code for k in (canary["api_key"], key["api_key"], known_unknown)] == [
        401
    ] * 3
    hits = canary_hits(sidecar)

    answers = {
        name: get(value)
        for name, value in [
            ("unknown", keyformat.generate()),
            ("canary", canary["api_key"]),
            ("revoked", key["api_key"]),
            ("known unknown", known_unknown),
        ]
    }

    def shape(response: httpx.Response) -> tuple[object, ...]:
        drop = {"x-request-id", "date", "retry-after"}  # per request / per second
        headers = sorted((k, v) for k, v in response.headers.items() if k not in drop)
        return response.status_code, response.content, headers, "retry-after" in response.headers

    assert {name: shape(r) for name, r in answers.items()} == {
        name: shape(answers["unknown"]) for name in answers
    }
    assert answers["unknown"].status_code == 429
    assert answers["unknown"].json() == {"detail": "Too many failed authentication attempts"}
    assert canary_hits(sidecar) == hits + 1  # still counted...
    wait_until(lambda: sidecar.logs().count("canary key used") == 2, timeout=5)  # ...and logged

    def recorded() -> int:  # ...and audited, the 429 one too (canary.used)
        out = cli("--config", str(sidecar.config_path), "audit", "export", "--user", user)
        return sum(
            orjson.loads(line)["action"] == "canary.used" for line in out.stdout.splitlines()
        )

    wait_until(lambda: recorded() == 2, timeout=15)
    api.http.close()
