"""Key records written by the release before key lifecycle keep working (issue 11 §6),
and the revocation audit (``revoked_reason``) over a real sidecar and Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from sidecar.redisconn.client import Durability
from tests.conftest import Api
from tests.harness import HASH_SECRET, RedisProcess, remember_secret, wait_until

NS = "callcov:{callcov-keys}"
PATH = "/api/v1/analysis/"


def write_legacy_key(
    client: redis.Redis, user: str, description: str | None = None
) -> dict[str, str]:
    """A key exactly as the previous release's create script stored it: no
    environment, no expiry, the user's active keys in a plain SET."""
    api_key = remember_secret(keyformat.generate())
    key_hash = KeyHasher(HASH_SECRET.encode()).hash(api_key)
    key_id = str(uuid.uuid4())
    moment = datetime.now(UTC)
    created_at = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = {
        "id": key_id,
        "user_id": user,
        "key_prefix": api_key[:14],
        "hash": key_hash,
        "is_active": "1",
        "created_at": created_at,
        "updated_at": created_at,
    }
    if description is not None:
        record["description"] = description
    entry = {"id": key_id, "user_id": user, "hash": key_hash, "active": True}
    client.hset(f"{NS}:rec:{key_id}", mapping=record)
    client.sadd(f"{NS}:user:{user}:active", key_id)
    client.zadd(f"{NS}:user:{user}:all", {key_id: int(moment.timestamp() * 1_000_000)})
    client.hset(f"{NS}:prefix:{api_key[:14]}", key_hash, orjson.dumps(entry))
    return {"id": key_id, "api_key": api_key}


def listing(api: Api, user: str, include_expired: bool = False) -> dict[str, dict[str, Any]]:
    params = {"include_expired": "true"} if include_expired else {}
    body = api.http.get("/api/v1/api-keys/", params=params, headers=api.bearer(user)).json()
    return {item["id"]: item for item in body["api_keys"]}


def test_a_key_in_the_previous_layout_authenticates_and_lists_as_live_without_expiry(
    api: Api, user: str, redis_client: redis.Redis, recorder: Any
) -> None:
    legacy = write_legacy_key(redis_client, user, "from the old release")
    response = api.http.get(PATH, headers={"X-API-Key": legacy["api_key"]})
    assert response.status_code == 200
    seen = response.json()["headers"]
    assert seen["x-callcov-key-id"] == legacy["id"]
    item = listing(api, user)[legacy["id"]]
    assert item["is_active"] is True
    assert item["environment"] == "live"
    assert item["expires_at"] is None
    assert item["rotated_to"] is None and item["revoked_reason"] is None
    assert item["description"] == "from the old release"


def test_previous_layout_keys_count_against_the_live_limit_and_move_on_create(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    legacy = [write_legacy_key(redis_client, user) for _ in range(9)]
    api.create_key(user)  # the 10th live key: the old SET is adopted, nothing lost
    assert not redis_client.exists(f"{NS}:user:{user}:active")
    assert redis_client.zcard(f"{NS}:user:{user}:active:live") == 10
    refused = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert refused.status_code == 400
    deleted = api.http.delete(f"/api/v1/api-keys/{legacy[0]['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    assert api.http.get(PATH, headers={"X-API-Key": legacy[0]["api_key"]}).status_code == 401
    api.create_key(user)  # the freed slot
    assert len(listing(api, user)) == 10


def test_deleting_a_previous_layout_key_before_any_create_frees_its_slot(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    legacy = [write_legacy_key(redis_client, user) for _ in range(10)]
    api.http.delete(f"/api/v1/api-keys/{legacy[0]['id']}", headers=api.bearer(user))
    api.create_key(user)
    again = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert again.status_code == 400
    for key in legacy[1:]:
        assert api.http.get(PATH, headers={"X-API-Key": key["api_key"]}).status_code == 200


def test_delete_records_reason_revoked_and_the_first_reason_stays(
    api: Api, user: str, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    kept = api.create_key(user)
    gone = api.create_key(user)
    api.http.delete(f"/api/v1/api-keys/{gone['id']}", headers=api.bearer(user))

    async def report_leaked() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            store = KeyStore(
                client,
                KeyHasher(HASH_SECRET.encode()),
                10,
                retry_after=1,
                durability=Durability(0, 1),
            )
            await store.revoke(gone["id"], None, reason="leaked", audit={"revoked_url": "u"})
        finally:
            await client.aclose()

    asyncio.run(report_leaked())
    items = listing(api, user, include_expired=True)
    assert items[gone["id"]]["revoked_reason"] == "revoked"
    assert items[kept["id"]]["revoked_reason"] is None
    assert redis_client.hget(f"{NS}:rec:{gone['id']}", "revoked_url") is None


def test_a_leak_report_records_its_reason_and_audit_fields(
    api: Api, user: str, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    key = api.create_key(user)
    assert api.http.get(PATH, headers={"X-API-Key": key["api_key"]}).status_code == 200

    async def report_leaked() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            store = KeyStore(
                client,
                KeyHasher(HASH_SECRET.encode()),
                10,
                retry_after=1,
                durability=Durability(0, 1),
            )
            audit = {"revoked_url": "https://github.com/o/r/blob/x"}
            await store.revoke(key["id"], None, reason="leaked", audit=audit)
        finally:
            await client.aclose()

    asyncio.run(report_leaked())
    wait_until(  # the revocation reaches the instance that cached the key
        lambda: api.http.get(PATH, headers={"X-API-Key": key["api_key"]}).status_code == 401,
        timeout=1.0,
    )
    item = listing(api, user, include_expired=True)[key["id"]]
    assert item["revoked_reason"] == "leaked" and item["is_active"] is False
    record = redis_client.hgetall(f"{NS}:rec:{key['id']}")
    assert record[b"revoked_url"] == b"https://github.com/o/r/blob/x"
    assert record[b"revoked_at"] == record[b"expires_at"]


def test_a_previous_layout_key_can_be_rotated(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    legacy = [write_legacy_key(redis_client, user, "old") for _ in range(10)]
    response = api.http.post(
        f"/api/v1/api-keys/{legacy[0]['id']}/rotate",
        json={"grace_period_seconds": 0},
        headers=api.bearer(user),
    )
    assert response.status_code == 201, response.text
    new = response.json()
    remember_secret(new["api_key"])
    assert (new["description"], new["environment"], new["expires_at"]) == ("old", "live", None)
    assert api.http.get(PATH, headers={"X-API-Key": legacy[0]["api_key"]}).status_code == 401
    assert api.http.get(PATH, headers={"X-API-Key": new["api_key"]}).status_code == 200
    assert legacy[0]["id"].encode() not in redis_client.smembers(f"{NS}:user:{user}:active")
    refused = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert refused.status_code == 400  # 9 old + the new one: still at the limit
