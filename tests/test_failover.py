"""Redis refusing writes, and failovers: every Redis error is a 503 with Retry-After
(never a 500), JWTs keep working, /readyz says why, and an acknowledged write is
never undone by a failover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import exceptions as redis_errors

from sidecar.redis_conn import error_code, unexpected
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, wait_until

# Error replies as real servers send them (redis-server 6.2.14 and 7.0.15), in the
# form redis-py raises them.
_IN_SCRIPT_6 = "Error running script (call to f_33ec): @user_script:1: @user_script: 1: -"
_NOREPLICAS = "NOREPLICAS Not enough good replicas to write."
_READONLY = "You can't write against a read only replica."
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
