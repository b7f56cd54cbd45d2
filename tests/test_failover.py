"""Redis refusing writes, and failovers: every Redis error is a 503 with Retry-After
(never a 500), JWTs keep working, /readyz says why, and an acknowledged write is
never undone by a failover."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import exceptions as redis_errors

from sidecar.redisconn.client import error_code, unexpected
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, remember_secret, wait_until
from tests.redis_topology import ClusterSet, SentinelSet
from tests.test_admin import scrape

# Error replies as real servers send them (redis-server 6.2.14 and 7.0.15), in the
# form redis-py raises them.
SENTINEL_SOURCE = frozenset({("source", "sentinel")})
READONLY_SOURCE = frozenset({("source", "readonly")})
KEY_DATA = "callcov:{callcov-keys}:any"  # a key in the key data's slot
_IN_SCRIPT_6 = "Error running script (call to f_33ec): @user_script:1: @user_script: 1: -"
_NOREPLICAS = "NOREPLICAS Not enough good replicas to write."
_READONLY = "You can't write against a read only replica."
_WAIT_ON_REPLICA = "WAIT cannot be used with replica instances."
Reply = redis_errors.ResponseError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Reply(_NOREPLICAS), "NOREPLICAS"),
        (Reply(_IN_SCRIPT_6 + _NOREPLICAS, status_code="ERR"), "NOREPLICAS"),
        (Reply(_NOREPLICAS + " script: 33ec, on @user_script:1."), "NOREPLICAS"),  # Redis 7
        (redis_errors.ReadOnlyError(_READONLY, status_code="READONLY"), "READONLY"),
        (Reply(f"{_IN_SCRIPT_6}READONLY {_READONLY}", status_code="ERR"), "READONLY"),
        (redis_errors.ReadOnlyError(f"READONLY {_READONLY}"), "READONLY"),  # autopipeline's
        (
            redis_errors.MasterDownError("Link with MASTER is down", status_code="MASTERDOWN"),
            "MASTERDOWN",
        ),
        (Reply(f"{_WAIT_ON_REPLICA} Please also note...", status_code="ERR"), "READONLY"),
        (Reply(f"ERR {_WAIT_ON_REPLICA} Please also note..."), "READONLY"),
        (Reply("WRONGTYPE Operation against a key holding the wrong kind of value"), "WRONGTYPE"),
        (redis_errors.ConnectionError("Connection refused"), None),
    ],
)
def test_error_codes_are_read_from_every_reply_shape(error: Exception, code: str | None) -> None:
    assert error_code(error) == code
    assert unexpected(error) == (code == "WRONGTYPE")


@pytest.fixture
def lonely_master(tmp_path: Path) -> Any:
    """A Redis that requires one replica for every write, and has none."""
    with RedisProcess(tmp_path) as server:
        yield server


@contextlib.contextmanager
def _master_and_replica(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A master with one replica attached; both stopped afterwards."""
    for name in ("master", "replica"):
        (tmp_path / name).mkdir()
    with RedisProcess(tmp_path / "master") as master:
        replica = RedisProcess(
            tmp_path / "replica", args=("--replicaof", "127.0.0.1", str(master.port))
        )
        replica.start()
        try:
            wait_until(lambda: _attached(master) == 1, timeout=10)
            yield master, replica
        finally:
            replica.stop()


def _attached(master: RedisProcess) -> int:
    return int(master.client().info("replication")["connected_slaves"])


def test_no_replicas_to_write_is_503_and_jwts_keep_working(
    lonely_master: RedisProcess, config_for: Any, spawn: Any, user: str
) -> None:
    rate_limited = {"enabled": True, "default": {"requests": 50, "per_seconds": 60}}
    process: SidecarProcess = spawn(
        config_for(redis={"url": lonely_master.url}, rate_limits=rate_limited)
    )
    api = Api(process.url)
    jwt = api.bearer(user)
    existing = api.create_key(user)
    ready = process.admin_url + "/readyz"
    assert httpx.get(ready).status_code == 200
    client = lonely_master.client()
    client.config_set("min-replicas-to-write", 1)
    try:
        created = api.http.post("/api/v1/api-keys/", json={}, headers=jwt)
        assert (created.status_code, created.headers["retry-after"]) == (503, "3")
        assert created.json() == {"detail": "Authentication store unavailable, retry later"}
        deleted = api.http.delete(f"/api/v1/api-keys/{existing['id']}", headers=jwt)
        assert (deleted.status_code, deleted.headers["retry-after"]) == (503, "3")
        # The rate limiter cannot write either: it fails open (the default), so JWTs and
        # keys Redis can still look up (a read) keep working, without remaining-budget headers.
        by_jwt = api.http.get("/a", headers={"Authorization": f"Bearer {make_token(user)}"})
        by_key = api.http.get("/a", headers={"X-API-Key": existing["api_key"]})
        assert (by_jwt.status_code, by_key.status_code) == (200, 200)
        assert "x-ratelimit-remaining" not in by_jwt.headers
        assert httpx.get(ready).json() == {
            "status": "unready",
            "problems": ["redis cannot take writes (NOREPLICAS)"],
        }
        assert httpx.get(ready).status_code == 503
        assert "unhandled error" not in process.logs()
    finally:
        client.config_set("min-replicas-to-write", 0)
    wait_until(lambda: httpx.get(ready).status_code == 200, timeout=5)
    deleted = api.http.delete(f"/api/v1/api-keys/{existing['id']}", headers=jwt)
    assert deleted.status_code == 200
    api.create_key(user)
    api.http.close()


class Workload:
    """Creates keys and DELETEs pre-made ones through two sidecars, alternating, and
    records every answer with its time."""

    def __init__(self, sidecars: list[SidecarProcess], user: str, doomed: list[dict[str, Any]]):
        self.apis = [Api(s.url) for s in sidecars]
        self.user = user
        self.doomed = list(doomed)
        self.created: list[tuple[float, int, dict[str, Any] | None]] = []
        self.deleted: list[tuple[float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(0.02):  # paced: a few hundred writes, not thousands
            api = self.apis[turn % 2]
            turn += 1
            jwt = api.bearer(self.user)
            if turn % 2 and self.doomed:
                key = self.doomed.pop()
                answer = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=jwt)
                self.deleted.append((time.monotonic(), answer.status_code, key))
            else:
                answer = api.http.post("/api/v1/api-keys/", json={}, headers=jwt)
                body = answer.json() if answer.status_code == 201 else None
                if body is not None:
                    remember_secret(body["api_key"])
                    # Keep under the active-key limit: the test needs creates, not 400s.
                    self.doomed.append(body)
                self.created.append((time.monotonic(), answer.status_code, body))

    def __enter__(self) -> Workload:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for api in self.apis:
            api.http.close()

    def answers(self) -> list[tuple[float, int]]:
        return sorted([(t, s) for t, s, _ in self.created] + [(t, s) for t, s, _ in self.deleted])


def _agree(sidecars: list[SidecarProcess], user: str) -> bool:
    """A key created through one instance works on the other, and a DELETE through
    that one is honoured by the first: the instances (and Redis) agree again."""
    first, second = (Api(s.url) for s in sidecars)
    try:
        jwt = first.bearer(user)
        created = first.http.post("/api/v1/api-keys/", json={}, headers=jwt)
        if created.status_code != 201:
            return False
        key = created.json()
        remember_secret(key["api_key"])
        if _key_status(sidecars[1], key) != 200:
            return False
        deleted = second.http.delete(f"/api/v1/api-keys/{key['id']}", headers=jwt)
        return deleted.status_code == 200 and _key_status(sidecars[0], key) == 401
    finally:
        first.http.close()
        second.http.close()


def _key_status(sidecar: SidecarProcess, key: dict[str, Any]) -> int:
    return httpx.get(sidecar.url + "/a", headers={"X-API-Key": key["api_key"]}).status_code


def _check_nothing_lost(
    what: str,
    load: Workload,
    sidecars: list[SidecarProcess],
    started: float,
    settled: tuple[float, float],
) -> None:
    """Every answer was 2xx or 503; every acknowledged create and DELETE holds on every
    instance. Prints the 503 window and counts (measured, not asserted)."""
    answers = load.answers()
    failures = [(t - started, s) for t, s in answers if s not in (200, 201)]
    assert {s for _, s in failures} <= {503}, failures
    acked_creates = [body for _, status, body in load.created if status == 201]
    acked_deletes = [key for _, status, key in load.deleted if status == 200]
    assert acked_creates and acked_deletes
    tried = [key for _, _, key in load.deleted]  # a 503'd DELETE may or may not apply
    lost = [
        f"create {k['key_prefix']}"
        for k in acked_creates
        if k not in tried and any(_key_status(s, k) != 200 for s in sidecars)
    ]
    lost += [
        f"delete {k['key_prefix']}"
        for k in acked_deletes
        if any(_key_status(s, k) != 401 for s in sidecars)
    ]
    refused = [key for _, status, key in load.deleted if status == 503]
    # Republished once a master could replicate them (when they may have been applied).
    in_effect = sum(all(_key_status(s, k) == 401 for s in sidecars) for k in refused)
    window = (failures[-1][0] - failures[0][0]) if failures else 0.0
    print(
        f"\n{what} failover: {len(answers)} writes, {len(failures)} answered 503 "
        f"over {window:.2f} s (first at +{failures[0][0] if failures else 0:.2f} s), "
        f"{len(lost)} acknowledged write(s) lost; instances agree again after "
        f"{settled[0] - started:.2f} s, topology settled after {settled[1] - started:.2f} s; "
        f"{in_effect} of {len(refused)} DELETEs answered 503 in effect"
    )
    assert lost == []


def _start_two(
    config_for: Any, tmp_path: Path, sidecars: list[SidecarProcess], redis: dict[str, Any]
) -> None:
    """Two sidecars on this Redis, added to ``sidecars`` (which the caller stops)."""
    for _ in range(2):
        config = config_for(
            redis={**redis, "socket_timeout_seconds": 0.5},
            # A 503'd create may still have happened: room for such orphans.
            auth={"api_keys": {"max_active_per_user": 100}},
        )
        sidecars.append(SidecarProcess(config, tmp_path).start())


@pytest.mark.parametrize("kind", ["planned", "crash"])
def test_a_failover_never_undoes_an_acknowledged_write(
    kind: str, config_for: Any, tmp_path: Path, user: str
) -> None:
    # One replica: WAIT for 1 then covers every replica, as it must (docs/operations/redis.md).
    sentinel = SentinelSet(tmp_path / "redis", replicas=1, sentinels=3).start()
    sidecars: list[SidecarProcess] = []
    try:
        _start_two(config_for, tmp_path, sidecars, {"url": sentinel.url})
        doomed = [Api(sidecars[0].url).create_key(user) for _ in range(5)]
        with Workload(sidecars, user, doomed) as load:
            wait_until(lambda: len(load.created) >= 5, timeout=10)
            started = time.monotonic()
            old = sentinel.failover() if kind == "planned" else sentinel.kill_master()
            wait_until(lambda: sentinel.master_port() not in (None, old), timeout=30)
            if kind == "crash":  # brought back (empty), as an orchestrator would: a replica now
                next(s for s in sentinel.servers if s.port == old).start()
            wait_until(lambda: _agree(sidecars, user + "-probe"), timeout=60, interval=0.1)
            agreed = time.monotonic()
            wait_until(sentinel.settled, timeout=30)  # the old master resynced (or is dead)
            switched = time.monotonic()
            count = len(load.created)
            wait_until(lambda: len(load.created) >= count + 5, timeout=30)
        _check_nothing_lost(f"{kind} Sentinel", load, sidecars, started, (agreed, switched))
        for process in sidecars:  # each instance followed the master, and said so
            samples, _ = scrape(process)
            followed = samples[("sidecar_redis_master_switches_total", SENTINEL_SOURCE)]
            assert followed >= 1, process.logs()
            assert "redis master changed (sentinel reports" in process.logs()
    finally:
        for process in sidecars:
            process.stop()
        sentinel.stop()


def test_writes_and_rate_limit_counts_wait_for_a_replica(
    config_for: Any, spawn: Any, tmp_path: Path, user: str
) -> None:
    with _master_and_replica(tmp_path) as (master, replica):
        rate_limited = {"enabled": True, "default": {"requests": 50, "per_seconds": 60}}
        process: SidecarProcess = spawn(
            config_for(
                redis={"url": master.url, "min_replicas_acked": 1},
                rate_limits=rate_limited,
            )
        )
        api = Api(process.url)
        ready = process.admin_url + "/readyz"
        jwt = {"Authorization": f"Bearer {make_token(user)}"}
        counted = api.http.get("/a", headers=jwt)
        assert (counted.status_code, counted.headers["x-ratelimit-remaining"]) == (200, "49")
        api.create_key(user)
        assert httpx.get(ready).status_code == 200

        replica.stop()
        wait_until(lambda: _attached(master) == 0, timeout=10)
        created = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
        assert (created.status_code, created.headers["retry-after"]) == (503, "3")
        # The count cannot be made durable: fail open (the default), budget unknown.
        uncounted = api.http.get("/a", headers=jwt)
        assert uncounted.status_code == 200
        assert "x-ratelimit-remaining" not in uncounted.headers
        assert httpx.get(ready).json()["problems"] == [
            "redis writes not replicated (0 of 1 replica(s) confirmed in time)"
        ]

        replica.start()
        wait_until(lambda: httpx.get(ready).status_code == 200, timeout=10)
        api.create_key(user)
        assert "x-ratelimit-remaining" in api.http.get("/a", headers=jwt).headers
        api.http.close()


@pytest.mark.parametrize("kind", ["manual", "kill"])
def test_a_cluster_failover_never_undoes_an_acknowledged_write(
    kind: str, config_for: Any, tmp_path: Path, user: str
) -> None:
    cluster = ClusterSet(tmp_path / "cluster", replicas=1, node_timeout_ms=1000).start()
    sidecars: list[SidecarProcess] = []
    try:
        _start_two(config_for, tmp_path, sidecars, {"url": cluster.url, "min_replicas_acked": 1})
        doomed = [Api(sidecars[0].url).create_key(user) for _ in range(5)]
        master = cluster.node_for_key(KEY_DATA)
        replica = cluster.replica_of(master)
        with Workload(sidecars, user, doomed) as load:
            wait_until(lambda: len(load.created) >= 5, timeout=10)
            started = time.monotonic()
            if kind == "manual":
                replica.client.execute_command("CLUSTER", "FAILOVER")
            else:
                master.stop()
            wait_until(lambda: replica.role() == "master", timeout=30)
            if kind == "kill":  # back, as a replica of the promoted one
                master.restart()
            wait_until(lambda: _agree(sidecars, user + "-probe"), timeout=60, interval=0.1)
            agreed = time.monotonic()
            wait_until(cluster.settled, timeout=30)
            switched = time.monotonic()
            count = len(load.created)
            wait_until(lambda: len(load.created) >= count + 5, timeout=30)
        _check_nothing_lost(f"cluster {kind}", load, sidecars, started, (agreed, switched))
    finally:
        for process in sidecars:
            process.stop()
        cluster.stop()


def test_a_demoted_redis_is_a_503_and_followed_once(
    config_for: Any, spawn: Any, tmp_path: Path, user: str
) -> None:
    """Pointed at a replica (as after a demotion), writes get READONLY: 503s, and the
    instance drops its connections, once per burst, not once per write."""
    with _master_and_replica(tmp_path) as (_, replica):
        process: SidecarProcess = spawn(config_for(redis={"url": replica.url}))
        api = Api(process.url)
        answers = [
            api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user)) for _ in range(20)
        ]
        assert {(a.status_code, a.headers["retry-after"]) for a in answers} == {(503, "3")}
        api.http.close()
        samples, _ = scrape(process)
        followed = samples[("sidecar_redis_master_switches_total", READONLY_SOURCE)]
        assert 1 <= followed < 20
        assert "redis master changed (a write was refused with READONLY)" in process.logs()


def test_a_wait_refused_by_a_replica_is_followed_as_a_demotion(
    config_for: Any, spawn: Any, tmp_path: Path, user: str
) -> None:
    """A write script that finds nothing to change writes nothing (here: the audit
    chain moved on since this instance last wrote), so on a replica only its WAIT
    fails, with a plain ERR. That too means "demoted": a sidecar that took it for a bug
    kept its connection to the deposed master after a failover, every write a 503."""
    with _master_and_replica(tmp_path) as (master, replica):
        writer: SidecarProcess = spawn(
            config_for(redis={"url": master.url, "min_replicas_acked": 1})
        )
        Api(writer.url).create_key(user)  # the chain's head moves on
        process: SidecarProcess = spawn(
            config_for(redis={"url": replica.url, "min_replicas_acked": 1})
        )
        api = Api(process.url)
        answer = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "3")
        api.http.close()
        samples, _ = scrape(process)
        assert samples[("sidecar_redis_master_switches_total", READONLY_SOURCE)] == 1
        assert "unexpected Redis error" not in process.logs()
