"""The Redis key store: shared prefixes, and no full key stored anywhere."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.schema import prefix_index_key
from sidecar.keys.store import KeyStore
from sidecar.redisconn.client import Durability
from tests.conftest import Api
from tests.harness import HASH_SECRET, RedisProcess, SidecarProcess

SHARED_STARTS = ["AAAAAA", "AAAAAB", "zzzzzz", "000000", "Q1Q1Q1"]


def _forced_generator() -> Iterator[str]:
    for start in itertools.cycle(SHARED_STARTS):
        yield keyformat.generate(start)


async def _create_on_shared_prefixes(url: str, count: int, run: str) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(url)
    keys = _forced_generator()
    store = KeyStore(
        client,
        KeyHasher(HASH_SECRET.encode()),
        10,
        retry_after=1,
        durability=Durability(0, 1),
        generate=lambda environment: next(keys),
    )
    created = []
    try:
        for index in range(count):
            user = f"prefix-{run}-{index // 10}"
            key = await store.create(user, None)
            created.append({"user": user, "id": key.id, "api_key": key.api_key})
    finally:
        await client.aclose()
    return created


def test_two_thousand_keys_on_five_prefixes_all_verify(
    redis_server: RedisProcess, sidecar: SidecarProcess, user: str
) -> None:
    created = asyncio.run(_create_on_shared_prefixes(redis_server.url, 2000, user))
    assert {c["api_key"][:14] for c in created} == {"sk_live_" + s for s in SHARED_STARTS}
    with httpx.Client(base_url=sidecar.url, timeout=30) as client:
        for item in created:
            response = client.get("/api/v1/analysis/", headers={"X-API-Key": item["api_key"]})
            assert response.status_code == 200, item["id"]
            seen = response.json()["headers"]
            assert seen["x-callcov-user-id"] == item["user"]
            assert seen["x-callcov-key-id"] == item["id"]
        for start in SHARED_STARTS:  # right prefix, valid checksum, never issued
            stranger = keyformat.generate(start)
            response = client.get("/api/v1/analysis/", headers={"X-API-Key": stranger})
            assert response.status_code == 401


def test_redis_never_holds_a_full_key(api: Api, user: str, redis_client: redis.Redis) -> None:
    issued = [api.create_key(user, f"key {i}")["api_key"] for i in range(3)]
    for key in issued:  # used once, so verification and usage data are written too
        assert api.http.get("/api/v1/analysis/", headers={"X-API-Key": key}).status_code == 200
    dump = b"\n".join(_everything(redis_client))
    assert dump, "expected key data in Redis"
    for key in issued:
        assert key.encode() not in dump
        assert key[14:-6].encode() not in dump  # not even the random part without prefix
        assert key[:14].encode() in dump  # the prefix is stored, as designed


def test_verification_is_one_lookup_by_the_keyed_hash(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    """The HMAC is the field looked up; the entry does not repeat it (a comparison of
    the two could never fail, so there is none)."""
    created = api.create_key(user)
    field = KeyHasher(HASH_SECRET.encode()).hash(created["api_key"])
    index = prefix_index_key(created["key_prefix"])
    entry = orjson.loads(redis_client.hget(index, field) or b"null")
    assert entry == {"id": created["id"], "user_id": user, "active": True}
    used = api.http.get("/api/v1/analysis/", headers={"X-API-Key": created["api_key"]})
    assert used.status_code == 200
    api.http.delete(f"/api/v1/api-keys/{created['id']}", headers=api.bearer(user))
    entry = orjson.loads(redis_client.hget(index, field) or b"null")
    assert entry == {"id": created["id"], "user_id": user, "active": False}


def _everything(client: redis.Redis) -> Iterator[bytes]:
    for name in client.scan_iter(count=1000):
        yield name
        kind = client.type(name)
        if kind == b"hash":
            for field, value in client.hgetall(name).items():
                yield field
                yield value
        elif kind == b"set":
            yield from client.smembers(name)
        elif kind == b"zset":
            yield from client.zrange(name, 0, -1)
        elif kind == b"string":
            yield client.get(name) or b""
        elif kind == b"list":
            yield from client.lrange(name, 0, -1)
