"""Shared by the key-lifecycle tests: keys written straight through the store (for
expiry moments closer than the API's 60 s minimum), and a view of a user's Redis data."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from tests.harness import HASH_SECRET, remember_secret

NS = "callcov:{callcov-keys}"
PATH = "/api/v1/analysis/"


def store_create(
    url: str, user: str, *, seconds: float | None = None, environment: str = "live", count: int = 1
) -> list[dict[str, Any]]:
    """``count`` keys created by the store itself (as the CLI does), expiring in
    ``seconds``; each with its ``expires`` moment (epoch seconds)."""

    async def run() -> list[dict[str, Any]]:
        client = aioredis.Redis.from_url(url)
        try:
            store = KeyStore(client, KeyHasher(HASH_SECRET.encode()), 10, retry_after=1)
            created = []
            for _ in range(count):
                moment = None if seconds is None else datetime.now(UTC) + timedelta(seconds=seconds)
                key = await store.create(user, None, environment=environment, expires_at=moment)
                remember_secret(key.api_key)
                created.append(
                    {
                        "id": key.id,
                        "api_key": key.api_key,
                        "expires": None if moment is None else moment.timestamp(),
                    }
                )
            return created
        finally:
            await client.aclose()

    return asyncio.run(run())


def user_state(client: redis.Redis, user: str) -> dict[bytes, Any]:
    """Every Redis value that belongs to ``user``'s keys: their sets and records."""
    state: dict[bytes, Any] = {}
    for name in client.scan_iter(match=f"{NS}:user:{user}:*", count=1000):
        state[name] = client.zrange(name, 0, -1, withscores=True)
    for key_id in client.zrange(f"{NS}:user:{user}:all", 0, -1):
        record_name = f"{NS}:rec:{key_id.decode()}".encode()
        state[record_name] = client.hgetall(record_name)
    return state


def status(base: str, key: str) -> int:
    return httpx.get(base + PATH, headers={"X-API-Key": key}, timeout=10).status_code


def call_counts(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def served_until(base: str, key: str, give_up: float) -> tuple[float, float]:
    """Use ``key`` on ``base`` until it is refused: (when the last request answered 200
    was sent, when the first 401 came back), epoch seconds. A request sent after a
    deadline must not be served. Fails on any other status, or if the key still works
    at ``give_up`` (epoch seconds)."""
    last_ok = time.time()
    while True:
        sent = time.time()
        code = status(base, key)
        now = time.time()
        if code == 401:
            return last_ok, now
        assert code == 200, code
        assert now < give_up, "still accepted long after it should have stopped"
        last_ok = sent
