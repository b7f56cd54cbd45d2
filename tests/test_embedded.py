"""``redis.url: embedded``: a private redis-server started, persisted and stopped by the sidecar."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from sidecar.redisconn.embedded import EmbeddedRedis, EmbeddedRedisError
from tests.conftest import Api
from tests.harness import SidecarProcess


def _client(embedded: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(embedded.socket), socket_timeout=2, retry=None)


def _running(embedded: EmbeddedRedis) -> bool:
    try:
        return bool(_client(embedded).ping())
    except (redis.RedisError, OSError):
        return False


def test_data_survives_a_stop_and_start(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis")
    embedded.start()
    try:
        _client(embedded).set("k", "v")
        assert embedded.url == f"unix://{tmp_path / 'redis' / 'redis.sock'}"
    finally:
        embedded.stop()
    assert not _running(embedded)
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0  # the append-only file
    again = EmbeddedRedis(tmp_path / "redis")
    again.start()
    try:
        assert _client(again).get("k") == b"v"
    finally:
        again.stop()


def test_a_second_owner_is_refused_but_a_sharer_is_not(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path)
    owner.start()
    try:
        with pytest.raises(
            EmbeddedRedisError, match=r"already running on .*redis\.sock; is another"
        ):
            EmbeddedRedis(tmp_path).start()
        sharer = EmbeddedRedis(tmp_path)
        sharer.start(share=True)
        sharer.stop()  # leaves the owner's server alone
        assert _running(owner)
    finally:
        owner.stop()


def test_a_directory_too_deep_for_a_socket_is_explained(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(EmbeddedRedisError, match="too long for a Unix socket path"):
        EmbeddedRedis(deep).start()
    assert not deep.exists()


def test_a_sidecar_with_embedded_redis_keeps_keys_across_restarts(
    config_for: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = config_for(redis={"url": "embedded", "embedded_dir": str(data)})
    first = SidecarProcess(config, tmp_path).start()
    try:
        api = Api(first.url)
        key = api.create_key("embedded-user")
        assert api.http.get("/a", headers={"X-API-Key": key["api_key"]}).status_code == 200
        # An operator command shares the running sidecar's Redis (and leaves it running).
        listed = subprocess.run(
            [sys.executable, "-m", "sidecar", "keys", "list", "--config", str(first.config_path),
             "--user", "embedded-user"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert yaml.safe_load(listed.stdout)["total"] == 1
        assert api.http.get("/a", headers={"X-API-Key": key["api_key"]}).status_code == 200
        api.http.close()
    finally:
        first.signal(signal.SIGTERM)
        assert first.stop() == 0
    assert not _running(EmbeddedRedis(data))  # stopped with the sidecar

    second = SidecarProcess(config, tmp_path).start()
    try:
        api = Api(second.url)
        assert api.http.get("/a", headers={"X-API-Key": key["api_key"]}).status_code == 200
        api.http.close()
    finally:
        assert second.stop() == 0
