"""AutoPipeline against a real redis-server: batching, errors, reconnects, deadlines;
``pack`` against redis-py's own encoder."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from sidecar.config.model import RedisConfig
from sidecar.redisconn.autopipeline import AutoPipeline, pack
from sidecar.redisconn.client import connect
from tests.harness import RedisProcess

INCR = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path) as server:
        yield server


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_concurrent_commands_are_batched_and_answered_in_order(private_redis: RedisProcess) -> None:
    async def scenario() -> tuple[list[object], int]:
        client = aioredis.Redis.from_url(private_redis.url)
        pipeline = AutoPipeline(client)
        sha = await client.script_load(INCR)
        replies = await asyncio.gather(
            *(pipeline.run_script(pack("EVALSHA", sha, 1, f"k{i % 3}"), INCR) for i in range(300))
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
            pipeline.execute("INCR", "counter"),
            pipeline.execute("INCR", "text"),
            pipeline.execute("INCR", "counter"),
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
        command = pack("EVALSHA", await client.script_load(INCR), 1, "k")
        assert await pipeline.run_script(command, INCR) == 1
        private_redis.stop()
        with pytest.raises(redis_errors.ConnectionError):
            await pipeline.run_script(command, INCR)
        private_redis.start()  # same port, empty, no scripts cached
        assert await pipeline.run_script(command, INCR) == 1
        await pipeline.close()
        await client.aclose()

    run(scenario())


def test_a_redis_that_stops_answering_fails_the_waiting_commands_in_time(
    private_redis: RedisProcess,
) -> None:
    async def scenario() -> float:
        client = connect(private_redis.url, RedisConfig(socket_timeout_seconds=0.3))
        pipeline = AutoPipeline(client)
        assert await pipeline.execute("PING") == b"PONG"
        os.kill(private_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(redis_errors.TimeoutError):
                pings = asyncio.gather(*(pipeline.execute("PING") for _ in range(5)))
                await asyncio.wait_for(pings, 10)
            waited = time.monotonic() - started
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
        assert await pipeline.execute("PING") == b"PONG"  # a new connection
        await pipeline.close()
        await client.aclose()
        return waited

    waited = run(scenario())
    # Not before the timeout (less the event loop's timer slack), and well within 2 s.
    assert 0.29 <= waited < 2.0  # type: ignore[operator]


def test_close_fails_commands_still_waiting(private_redis: RedisProcess) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(private_redis.url)
        pipeline = AutoPipeline(client)
        blocked = pipeline.execute("BLPOP", "never", 0)  # Redis holds the reply back
        deadline = time.monotonic() + 10
        while not any(c["cmd"] == "blpop" for c in await client.client_list()):
            assert time.monotonic() < deadline, "BLPOP never reached Redis"
            await asyncio.sleep(0.01)
        await pipeline.close()
        with pytest.raises(redis_errors.ConnectionError):
            await blocked
        await client.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 1, "callcov:rl:{alice}:default", 1000, 100_000_000),
        ("SET", b"\x00\xffbinary", "ünïcode", -7),
        ("PING",),
        ("HSET", "k", "f", ""),
    ],
)
def test_pack_matches_redis_py(args: tuple[object, ...]) -> None:
    connection = aioredis.Connection()
    assert pack(*args) == b"".join(connection.pack_command(*args))  # type: ignore[arg-type]


def test_a_server_turned_replica_is_left_for_a_new_connection(tmp_path: Path) -> None:
    """After a failover the old master answers READONLY: the pipeline must not keep
    writing to it (it would fail every rate-limit check until a restart)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def scenario(first: RedisProcess, second: RedisProcess) -> None:
        client = aioredis.Redis.from_url(first.url)
        pipeline = AutoPipeline(client)
        assert await pipeline.execute("INCR", "n") == 1
        connection_before = await pipeline.execute("CLIENT", "ID")
        first.client().execute_command("REPLICAOF", "127.0.0.1", second.port)
        with pytest.raises(redis_errors.ReadOnlyError):
            await pipeline.execute("INCR", "n")
        first.client().execute_command("REPLICAOF", "NO", "ONE")
        assert await pipeline.execute("CLIENT", "ID") != connection_before
        await pipeline.close()
        await client.aclose()

    with RedisProcess(tmp_path / "a") as first, RedisProcess(tmp_path / "b") as second:
        run(scenario(first, second))
