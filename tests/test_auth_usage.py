"""last_used_at: kept up to date off the hot path (coalesced, flushed every N seconds)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from tests.conftest import Api
from tests.harness import RedisProcess, ServerThread, SidecarProcess, base_config, merge, wait_until
from tests.upstream_app import RecordingUpstream

FLUSH_EVERY = 0.3


@pytest.fixture(scope="module")
def flushing(
    quiet_redis: RedisProcess,
    upstream: tuple[RecordingUpstream, ServerThread],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SidecarProcess]:
    config = merge(
        base_config(redis_url=quiet_redis.url, upstream_url=upstream[1].url),
        {"auth": {"api_keys": {"last_used_flush_seconds": FLUSH_EVERY}}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("usage")).start()
    yield process
    process.stop()


def hset_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


def listed(api: Api, user: str) -> dict[str, Any]:
    keys: list[dict[str, Any]] = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()[
        "api_keys"
    ]
    return {k["id"]: k for k in keys}


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_last_used_at_appears_in_the_list_after_the_flush_interval(
    flushing: SidecarProcess, user: str
) -> None:
    api = Api(flushing.url)
    used, unused = api.create_key(user), api.create_key(user)
    assert listed(api, user)[used["id"]]["last_used_at"] is None
    before = datetime.now(UTC)
    assert (
        api.http.get("/api/v1/analysis/", headers={"X-API-Key": used["api_key"]}).status_code == 200
    )
    after = datetime.now(UTC)
    wait_until(lambda: listed(api, user)[used["id"]]["last_used_at"] is not None, FLUSH_EVERY + 3)
    keys = listed(api, user)
    stamp = parse(keys[used["id"]]["last_used_at"])
    assert before - timedelta(seconds=1) <= stamp <= after + timedelta(seconds=1)
    assert keys[unused["id"]]["last_used_at"] is None
    # Used again later: the time moves on.
    assert (
        api.http.get("/api/v1/analysis/", headers={"X-API-Key": used["api_key"]}).status_code == 200
    )
    wait_until(
        lambda: parse(listed(api, user)[used["id"]]["last_used_at"]) > stamp, FLUSH_EVERY + 3
    )


def test_uses_are_coalesced_not_written_per_request(
    flushing: SidecarProcess, quiet_redis: RedisProcess, user: str
) -> None:
    api = Api(flushing.url)
    key = api.create_key(user)["api_key"]
    client = quiet_redis.client()
    before = hset_calls(client)
    started = time.monotonic()
    requests = 60
    for _ in range(requests):
        assert api.http.get("/api/v1/analysis/", headers={"X-API-Key": key}).status_code == 200
    elapsed = time.monotonic() - started
    wait_until(lambda: hset_calls(client) > before, FLUSH_EVERY + 3)
    # At most one write per flush interval that passed, however many requests were made.
    flushes = elapsed / FLUSH_EVERY + 2
    assert hset_calls(client) - before <= flushes < requests
