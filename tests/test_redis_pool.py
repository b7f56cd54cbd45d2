"""The sidecar's Redis pool is bounded: callers beyond redis.max_connections wait for a
free connection instead of opening more (which a stall would otherwise pile up, and the
pool would keep open for good)."""

from __future__ import annotations

import asyncio
import uuid

import redis

from sidecar.config.model import RedisConfig
from sidecar.redisconn.client import connect
from tests.harness import RedisProcess


def test_concurrent_callers_share_at_most_max_connections(
    redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    name = f"pool-{uuid.uuid4().hex[:8]}"
    settings = RedisConfig(url=redis_server.url, max_connections=3, socket_timeout_seconds=5)
    seen: list[int] = []

    async def run() -> list[object]:
        client = connect(redis_server.url, settings)
        try:
            await client.client_setname(name)

            async def slow_call() -> object:
                # BLPOP holds its connection for 0.2 s, as a stalled Redis would.
                return await client.blpop([f"{name}:nothing"], timeout=0.2)

            async def watch() -> None:
                while True:
                    clients = redis_client.client_list()
                    seen.append(sum(1 for c in clients if c["cmd"] == "blpop"))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            try:
                return await asyncio.gather(*(slow_call() for _ in range(9)))
            finally:
                watcher.cancel()
        finally:
            await client.aclose()

    results = asyncio.run(run())
    assert results == [None] * 9  # every caller was served, none refused
    assert seen and max(seen) <= 3, seen
    assert max(seen) == 3  # the bound was reached: the calls really overlapped
