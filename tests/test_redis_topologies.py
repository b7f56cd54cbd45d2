"""The sidecar on a real Redis Cluster (3 masters) and behind a real Sentinel: keys,
verification, revocation across two instances and rate limiting all work through the
``redis+cluster://`` and ``redis+sentinel://`` URL forms."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Api
from tests.harness import SidecarProcess, merge, wait_until
from tests.redis_topology import ClusterSet, SentinelSet
from tests.test_cli import cli


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = ClusterSet(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master and one replica (writes wait for it), one Sentinel watching them."""
    sentinel = SentinelSet(tmp_path_factory.mktemp("sentinel"), replicas=1, sentinels=1).start()
    try:
        yield sentinel.url
    finally:
        sentinel.stop()


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


def test_the_audit_trail_on_a_cluster_keeps_a_users_events_in_order_and_verifies(
    cluster_url: str, config_for: Any, tmp_path: Path, user: str
) -> None:
    """Two instances write one user's changes through the 3-master Cluster: every event
    lands (the scripts' keys share the key data's slot), in order, and the chain holds."""
    a, b = _two_sidecars(cluster_url, config_for, tmp_path)
    try:
        expected: list[tuple[str, str]] = []
        for process in (a, b, a, b):
            api = Api(process.url)
            created = api.create_key(user)
            expected.append(("key.created", created["id"]))
            gone = api.http.delete(f"/api/v1/api-keys/{created['id']}", headers=api.bearer(user))
            assert gone.status_code == 200
            expected.append(("key.revoked", created["id"]))
            api.http.close()
        exported = cli("--config", str(a.config_path), "audit", "export", "--user", user)
        assert exported.returncode == 0, exported.stderr
        events = [orjson.loads(line) for line in exported.stdout.splitlines()]
        assert [(e["action"], e["key_id"]) for e in events] == expected
        ids = [tuple(map(int, e["id"].split("-"))) for e in events]
        assert ids == sorted(ids)
        feed = httpx.get(b.admin_url + "/audit/events", params={"limit": 1000}).json()
        assert [e["id"] for e in feed["events"] if e["user_id"] == user] == [
            e["id"] for e in events
        ]
        verified = cli("--config", str(b.config_path), "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        a.stop()
        b.stop()
