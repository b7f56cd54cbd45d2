"""The sidecar on a real Redis Cluster (3 masters) and behind a real Sentinel: keys,
verification, revocation across two instances and rate limiting all work through the
``redis+cluster://`` and ``redis+sentinel://`` URL forms."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sidecar.embedded import find_binary
from tests.conftest import Api
from tests.harness import RedisProcess, SidecarProcess, free_port, merge, wait_until

SLOTS = 16384


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class ClusterNode:
    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.port = _cluster_port()
        args = [
            find_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_until(self._up, timeout=10)
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def cluster_ok(self) -> bool:
        info = self.client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def stop(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters sharing the 16384 slots, formed with CLUSTER ADDSLOTS and MEET (no
    redis-cli needed)."""
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[ClusterNode] = []
    try:
        nodes += (ClusterNode(base / f"node{i}") for i in range(3))
        bounds = [0, SLOTS // 3, 2 * SLOTS // 3, SLOTS]
        for node, start, end in zip(nodes, bounds, bounds[1:], strict=False):
            node.client.execute_command("CLUSTER", "ADDSLOTS", *range(start, end))
        for node in nodes[1:]:
            nodes[0].client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        wait_until(lambda: all(node.cluster_ok() for node in nodes), timeout=20)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master and one Sentinel watching it as ``callcov``."""
    base = tmp_path_factory.mktemp("sentinel")
    master = RedisProcess(base)
    master.start()
    port = free_port()
    conf = base / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {base}\nlogfile {base / 'sentinel.log'}\n"
        f"sentinel monitor callcov 127.0.0.1 {master.port} 1\n"
    )
    sentinel = subprocess.Popen([find_binary(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)

    def knows_master() -> bool:
        try:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "callcov")
        except redis.RedisError:
            return False
        return bool(address) and int(address[1]) == master.port

    try:
        wait_until(knows_master, timeout=10)
        yield f"redis+sentinel://127.0.0.1:{port}/callcov"
    finally:
        client.close()
        sentinel.kill()
        sentinel.wait()
        master.stop()


def _two_sidecars(
    redis_url: str, config_for: Any, tmp_path: Path
) -> tuple[SidecarProcess, SidecarProcess]:
    override = {
        "redis": {"url": redis_url},
        "rate_limits": {"enabled": True, "default": {"requests": 5, "per_seconds": 60}},
    }
    a = SidecarProcess(merge(config_for(), override), tmp_path).start()
    b = SidecarProcess(merge(config_for(), override), tmp_path).start()
    return a, b


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_keys_revocation_and_rate_limits_work_on(
    topology: str, request: pytest.FixtureRequest, config_for: Any, tmp_path: Path, user: str
) -> None:
    redis_url = request.getfixturevalue(f"{topology}_url")
    a, b = _two_sidecars(redis_url, config_for, tmp_path)
    try:
        for process in (a, b):
            assert httpx.get(process.admin_url + "/readyz").status_code == 200
        created = Api(a.url).create_key(user)
        key = {"X-API-Key": created["api_key"]}
        via_b = httpx.Client(base_url=b.url)
        first = via_b.get("/api/v1/analysis/", headers=key)
        second = via_b.get("/api/v1/analysis/", headers=key)  # from B's key cache
        assert (first.status_code, second.status_code) == (200, 200)
        remaining = [r.headers["x-ratelimit-remaining"] for r in (first, second)]
        assert remaining == ["4", "3"]
        listed = Api(a.url).http.get("/api/v1/api-keys/", headers=Api(a.url).bearer(user))
        assert [k["id"] for k in listed.json()["api_keys"]] == [created["id"]]

        revoked = Api(a.url).http.delete(
            f"/api/v1/api-keys/{created['id']}", headers=Api(a.url).bearer(user)
        )
        assert revoked.status_code == 200
        wait_until(
            lambda: via_b.get("/api/v1/analysis/", headers=key).status_code == 401, timeout=1
        )

        # One budget for both instances: 5 requests, whichever instance serves them.
        other = {"Authorization": Api(a.url).bearer(user + "-jwt")["Authorization"]}
        statuses = [
            httpx.get(process.url + "/api/v1/analysis/", headers=other).status_code
            for process in (a, b, a, b, a, b, a)
        ]
        assert statuses == [200] * 5 + [429] * 2
        via_b.close()
    finally:
        a.stop()
        b.stop()
