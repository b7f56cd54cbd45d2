"""SPEC Part 2 "Expiry": expires_at on create, against real sidecars and Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Api
from tests.harness import RedisProcess, SidecarProcess, metric, wait_until
from tests.lifecycle_helpers import (
    NS,
    call_counts,
    served_until,
    status,
    store_create,
    user_state,
)

PROPAGATION_DEADLINE = 1.0


def ahead(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def test_create_with_an_expiry_answers_it_in_utc_and_lists_it(api: Api, user: str) -> None:
    moment = ahead(hours=2).replace(microsecond=0)
    offset = moment.astimezone(timezone(timedelta(hours=2))).isoformat()  # "+02:00" form
    response = api.http.post(
        "/api/v1/api-keys/", json={"expires_at": offset}, headers=api.bearer(user)
    )
    assert response.status_code == 201, response.text
    body = response.json()
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert body["expires_at"] == expected
    assert body["environment"] == "live"
    [item] = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()["api_keys"]
    assert item["expires_at"] == expected and item["is_active"] is True


def test_expiry_just_inside_the_bounds_is_accepted(api: Api, user: str) -> None:
    for moment in (ahead(seconds=90), ahead(days=365, seconds=-90)):
        response = api.http.post(
            "/api/v1/api-keys/",
            json={"expires_at": moment.isoformat().replace("+00:00", "Z")},
            headers=api.bearer(user),
        )
        assert response.status_code == 201, response.text


def test_create_without_expiry_answers_null(api: Api, user: str) -> None:
    assert api.create_key(user)["expires_at"] is None


BAD_EXPIRIES = {
    "in the past": lambda: ahead(hours=-1).isoformat(),
    "less than 60 s ahead": lambda: ahead(seconds=30).isoformat(),
    "beyond the maximum": lambda: ahead(days=366).isoformat(),
    "without a time zone": lambda: ahead(hours=1).replace(tzinfo=None).isoformat(),
    "a date without a time": lambda: ahead(days=2).date().isoformat(),
    "not a date": lambda: "next tuesday",
    "a number": lambda: int(ahead(hours=1).timestamp()),
    "digits in a string": lambda: str(int(ahead(hours=1).timestamp())),
    "an object": lambda: {"at": "2030-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("case", sorted(BAD_EXPIRIES))
def test_bad_expiries_get_422_at_body_expires_at_and_write_nothing(
    api: Api, user: str, redis_client: redis.Redis, case: str
) -> None:
    before = user_state(redis_client, user)
    response = api.http.post(
        "/api/v1/api-keys/", json={"expires_at": BAD_EXPIRIES[case]()}, headers=api.bearer(user)
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "expires_at"]
    assert {"type", "loc", "msg", "input"} <= set(error)
    assert user_state(redis_client, user) == before == {}


def test_a_key_stops_at_its_expiry_on_every_instance_without_a_message(
    api: Api,
    second: SidecarProcess,
    user: str,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
) -> None:
    [key] = store_create(redis_server.url, user, seconds=2.5)
    instances = [api.base, second.url]
    for base in instances:  # cached on both
        assert status(base, key["api_key"]) == 200
    before = call_counts(redis_client)

    give_up = key["expires"] + 5

    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(lambda base: served_until(base, key["api_key"], give_up), instances))
    for last_ok, first_refused in seen:
        assert last_ok < key["expires"] + 0.05  # never served past the instant
        assert first_refused - key["expires"] < PROPAGATION_DEADLINE
    after = call_counts(redis_client)
    assert after.get("publish", 0) == before.get("publish", 0)  # no message needed
    assert after.get("hget", 0) == before.get("hget", 0)  # both answered from their caches


def test_expired_keys_free_their_slots_and_list_only_with_include_expired(
    api: Api, user: str, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    expiring = store_create(redis_server.url, user, seconds=1.5, count=10)
    refused = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert refused.status_code == 400
    deadline = max(k["expires"] for k in expiring)
    while time.time() <= deadline:  # the keys' own clock, not a synchronisation
        time.sleep(deadline - time.time() + 0.01)
    fresh = api.create_key(user)
    assert redis_client.zrange(f"{NS}:user:{user}:active:live", 0, -1) == [fresh["id"].encode()]
    listed = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert [k["id"] for k in listed["api_keys"]] == [fresh["id"]]
    everything = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "true"}, headers=api.bearer(user)
    ).json()
    assert everything["total"] == 11
    for item in everything["api_keys"]:
        if item["id"] != fresh["id"]:
            assert item["is_active"] is False
            assert item["revoked_reason"] is None  # expiry is not a revocation
            assert item["expires_at"] is not None
    for key in expiring:
        assert status(api.base, key["api_key"]) == 401


def test_deleting_an_expired_key_records_no_revocation(
    api: Api, user: str, redis_server: RedisProcess
) -> None:
    [key] = store_create(redis_server.url, user, seconds=0.5)
    while time.time() <= key["expires"]:
        time.sleep(key["expires"] - time.time() + 0.01)
    deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    [item] = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "true"}, headers=api.bearer(user)
    ).json()["api_keys"]
    assert item["is_active"] is False and item["revoked_reason"] is None


def test_a_key_cached_before_redis_went_down_still_stops_at_its_expiry(
    config_for: Any, spawn: Any, tmp_path: Path
) -> None:
    """The stale window (Redis unreachable) serves a cached key, but never past its
    expires_at: the cache entry carries the deadline."""
    with RedisProcess(tmp_path) as own:
        process: SidecarProcess = spawn(config_for(redis={"url": own.url}))
        # Long enough that a loaded machine still reaches the stale check before expiry.
        [key] = store_create(own.url, "stale-user", seconds=5.0)
        # The revocation feed coming up clears the cache (it may have missed messages):
        # wait until a request is a cache hit, which only happens once the feed is up.
        wait_until(lambda: cached_hit(process, key["api_key"]), timeout=10)
        own.stop()
        assert status(process.url, key["api_key"]) == 200  # stale, within the window
        give_up = key["expires"] + 5
        last_ok, first_refused = served_until(process.url, key["api_key"], give_up)
        assert last_ok < key["expires"] + 0.05
        assert first_refused - key["expires"] < PROPAGATION_DEADLINE
        assert status(process.url, key["api_key"]) == 401  # refused, not 503: it is expired


def cached_hit(process: SidecarProcess, api_key: str) -> bool:
    """Whether a request with ``api_key`` (served: 200) was answered from the key cache."""
    hits = metric(process, "sidecar_key_cache_total", result="hit")
    assert status(process.url, api_key) == 200
    return metric(process, "sidecar_key_cache_total", result="hit") > hits
