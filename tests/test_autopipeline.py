"""AutoPipeline against a real redis-server: batching, errors, reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from sidecar.autopipeline import AutoPipeline
from sidecar.config import RedisConfig
from sidecar.redis_conn import connect
from tests.harness import RedisProcess

INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def private_redis(tmp_path: Path) -> RedisProcess:
    server = RedisProcess(tmp_path)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_concurrent_commands_are_batched_and_answered_in_order(private_redis: RedisProcess) -> None:
    async def scenario() -> tuple[list[object], int]:
        client = aioredis.Redis.from_url(private_redis.url)
        pipeline = AutoPipeline(client)
        sha = await client.script_load(INCR)
        replies = await asyncio.gather(
            *(pipeline.evalsha(sha, INCR, [f"k{i % 3}"], []) for i in range(300))
        )
        info = await client.info("stats")
        await pipeline.close()
        await client.aclose()
        return list(replies), int(info["total_connections_received"])

    replies, connections = run(scenario())  # type: ignore[misc]
    for key in range(3):
        assert sorted(replies[key::3]) == list(range(1, 101))  # type: ignore[type-var]
    assert connections <= 3  # one for script_load and info, one for the pipeline


def test_an_error_reply_fails_only_its_own_command(private_redis: RedisProcess) -> None:
    async def scenario() -> list[object]:
        client = aioredis.Redis.from_url(private_redis.url)
        await client.set("text", "not a number")
        pipeline = AutoPipeline(client)
        results = await asyncio.gather(
            pipeline.execute(("INCR", "counter")),
            pipeline.execute(("INCR", "text")),
            pipeline.execute(("INCR", "counter")),
            return_exceptions=True,
        )
        await pipeline.close()
        await client.aclose()
        return list(results)

    first, failed, third = run(scenario())  # type: ignore[misc]
    assert (first, third) == (1, 2)
    assert isinstance(failed, redis_errors.ResponseError)


def test_outage_fails_fast_and_recovers_with_script_reload(private_redis: RedisProcess) -> None:
    async def scenario() -> None:
        client = connect(private_redis.url, RedisConfig())  # the sidecar's own client settings
        pipeline = AutoPipeline(client)
        sha = await client.script_load(INCR)
        assert await pipeline.evalsha(sha, INCR, ["k"], []) == 1
        private_redis.stop()
        with pytest.raises(redis_errors.ConnectionError):
            await pipeline.evalsha(sha, INCR, ["k"], [])
        private_redis.start()  # same port, empty, no scripts cached
        assert await pipeline.evalsha(sha, INCR, ["k"], []) == 1
        await pipeline.close()
        await client.aclose()

    run(scenario())
