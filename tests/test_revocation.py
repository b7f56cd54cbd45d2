"""Revocation reaches every instance sharing the Redis within 1 s, cached keys included."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import prefix_index_key
from sidecar.keys.store import KeyStore
from sidecar.redisconn.client import Durability
from tests.conftest import Api
from tests.harness import HASH_SECRET, RedisProcess, SidecarProcess, wait_until

PATH = "/api/v1/analysis/"
PROPAGATION_DEADLINE = 1.0


def hget_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


def status(base: str, key: str) -> int:
    return httpx.get(base + PATH, headers={"X-API-Key": key}).status_code


def seconds_until_rejected(base: str, key: str) -> float:
    started = time.monotonic()
    wait_until(lambda: status(base, key) == 401, timeout=PROPAGATION_DEADLINE, interval=0.005)
    return time.monotonic() - started


def cache_on_both(instances: list[str], key: str, redis_client: redis.Redis) -> None:
    """Use the key on every instance, then prove each now answers from its cache."""
    for base in instances:
        assert status(base, key) == 200
    before = hget_calls(redis_client)
    for base in instances:
        assert status(base, key) == 200
    assert hget_calls(redis_client) == before


def revoke_as_operator(url: str, key_id: str) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            store = KeyStore(
                client,
                KeyHasher(HASH_SECRET.encode()),
                10,
                retry_after=1,
                durability=Durability(0, 1),
            )
            await store.revoke(key_id, None)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_key_deleted_through_one_instance_is_rejected_by_the_other_within_1s(
    api: Api, second: SidecarProcess, user: str, redis_client: redis.Redis
) -> None:
    latencies = []
    for _ in range(5):
        key = api.create_key(user)
        cache_on_both([api.base, second.url], key["api_key"], redis_client)
        deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
        assert deleted.status_code == 200
        latencies.append(seconds_until_rejected(second.url, key["api_key"]))
        assert status(api.base, key["api_key"]) == 401
    assert max(latencies) < PROPAGATION_DEADLINE, latencies


def test_a_key_revoked_by_an_operator_is_rejected_by_every_instance_within_1s(
    api: Api,
    second: SidecarProcess,
    user: str,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
) -> None:
    key = api.create_key(user)
    cache_on_both([api.base, second.url], key["api_key"], redis_client)
    revoke_as_operator(redis_server.url, key["id"])
    for base in (api.base, second.url):
        seconds_until_rejected(base, key["api_key"])
    listed = api.http.get("/api/v1/api-keys/?include_expired=true", headers=api.bearer(user))
    assert [k["is_active"] for k in listed.json()["api_keys"]] == [False]


def test_the_instance_that_deletes_a_key_rejects_it_at_once(api: Api, user: str) -> None:
    for _ in range(10):
        key = api.create_key(user)
        assert status(api.base, key["api_key"]) == 200
        api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
        assert status(api.base, key["api_key"]) == 401


def test_a_lost_revocation_feed_does_not_let_a_cached_key_outlive_its_revocation(
    api: Api,
    second: SidecarProcess,
    user: str,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
) -> None:
    """The subscription is cut and the revocation is published while nobody listens:
    the instances must notice the lost feed and stop trusting their caches."""
    key = api.create_key(user)
    cache_on_both([api.base, second.url], key["api_key"], redis_client)
    killed = redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 2
    revoke_as_operator(redis_server.url, key["id"])
    for base in (api.base, second.url):
        seconds_until_rejected(base, key["api_key"])
    # And the feed comes back: a later revocation propagates again.
    wait_until(lambda: len(redis_client.pubsub_channels()) == 2, timeout=5)  # and :state
    wait_until(lambda: redis_client.pubsub_numsub("callcov:revocations")[0][1] >= 2, timeout=5)
    again = api.create_key(user)
    cache_on_both([api.base, second.url], again["api_key"], redis_client)
    revoke_as_operator(redis_server.url, again["id"])
    seconds_until_rejected(second.url, again["api_key"])


def index_field(key: dict[str, Any]) -> tuple[str, str]:
    """Where Redis keeps the key's index entry: its prefix's hash, and its HMAC there."""
    return prefix_index_key(key["key_prefix"]), KeyHasher(HASH_SECRET.encode()).hash(key["api_key"])


def cached_key_and_its_entry(
    api: Api, second: SidecarProcess, user: str, client: redis.Redis
) -> tuple[dict[str, Any], bytes]:
    """A new key, cached on both instances, and its index entry as Redis has it now."""
    key = api.create_key(user)
    cache_on_both([api.base, second.url], key["api_key"], client)
    entry = client.hget(*index_field(key))
    assert isinstance(entry, bytes)
    return key, entry


def undo_as_a_failover_would(client: redis.Redis, key: dict[str, Any], entry: bytes) -> None:
    """Put the key's index entry back as it was before a write: what a failover does
    when the promoted replica never received that write."""
    client.hset(*index_field(key), entry)


def test_a_revocation_a_failover_undid_stays_in_force_on_every_instance_that_saw_it(
    api: Api, second: SidecarProcess, user: str, redis_client: redis.Redis
) -> None:
    key, active = cached_key_and_its_entry(api, second, user, redis_client)
    deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    seconds_until_rejected(second.url, key["api_key"])
    undo_as_a_failover_would(redis_client, key, active)
    # As after a failover, the instances subscribe again and clear their caches.
    assert redis_client.client_kill_filter(_type="pubsub") >= 2
    wait_until(lambda: redis_client.pubsub_numsub("callcov:revocations")[0][1] >= 2, timeout=5)
    before = hget_calls(redis_client)
    for base in (api.base, second.url):
        for _ in range(3):
            assert status(base, key["api_key"]) == 401
    assert hget_calls(redis_client) > before  # Redis was asked, and said "active"
    metrics = httpx.get(second.admin_url + "/metrics").text.splitlines()
    held = [line for line in metrics if line.startswith("sidecar_revocation_holds_total ")]
    assert held and float(held[0].split()[1]) >= 1, held


def test_a_rotation_a_failover_undid_still_ends_the_old_key_at_the_end_of_its_grace(
    api: Api, second: SidecarProcess, user: str, redis_client: redis.Redis
) -> None:
    old, active = cached_key_and_its_entry(api, second, user, redis_client)
    rotated = api.http.post(
        f"/api/v1/api-keys/{old['id']}/rotate",
        headers=api.bearer(user),
        json={"grace_period_seconds": 2},
    )
    assert rotated.status_code == 201, rotated.text
    undo_as_a_failover_would(redis_client, old, active)  # no expiry in Redis any more
    assert status(second.url, old["api_key"]) == 200  # within the grace
    wait_until(lambda: status(second.url, old["api_key"]) == 401, timeout=5, interval=0.1)
    assert status(api.base, old["api_key"]) == 401
