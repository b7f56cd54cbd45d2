"""SPEC Part 2 "Rotation": POST /api/v1/api-keys/{id}/rotate on real sidecars and Redis."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, remember_secret, wait_until
from tests.lifecycle_helpers import (
    call_counts,
    served_until,
    status,
    store_create,
    user_state,
)

PROPAGATION_DEADLINE = 1.0
NOT_ACTIVE = {"detail": "API key is not active"}
ROTATED = {"detail": "API key has already been rotated"}


def rotate(api: Api, user: str, key_id: str, body: Any = None) -> httpx.Response:
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    return api.http.post(f"/api/v1/api-keys/{key_id}/rotate", headers=api.bearer(user), **kwargs)


def rotated(api: Api, user: str, key_id: str, body: Any = None) -> dict[str, Any]:
    response = rotate(api, user, key_id, body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    remember_secret(created["api_key"])
    return created


def listing(api: Api, user: str) -> dict[str, dict[str, Any]]:
    body = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "true"}, headers=api.bearer(user)
    ).json()
    return {item["id"]: item for item in body["api_keys"]}


def test_rotation_answers_a_new_key_like_create_plus_rotated_from(api: Api, user: str) -> None:
    old = api.create_key(user, "billing job")
    new = rotated(api, user, old["id"])
    assert set(new) == {
        "id", "api_key", "key_prefix", "description", "created_at", "expires_at",
        "environment", "rotated_from", "scopes", "allowed_ips",
    }  # fmt: skip
    assert new["id"] != old["id"] and new["api_key"] != old["api_key"]
    assert keyformat.parse(new["api_key"]) is not None
    assert new["key_prefix"] == new["api_key"][:14]
    assert new["description"] == "billing job"
    assert new["environment"] == "live" and new["expires_at"] is None
    assert new["rotated_from"] == old["id"]
    items = listing(api, user)
    assert items[old["id"]]["rotated_to"] == new["id"]
    assert items[old["id"]]["is_active"] is True  # in its default one-day grace
    assert items[old["id"]]["revoked_reason"] is None
    assert items[new["id"]]["rotated_to"] is None
    grace_end = datetime.fromisoformat(items[old["id"]]["expires_at"].replace("Z", "+00:00"))
    assert abs((grace_end - datetime.now(UTC)).total_seconds() - 86400) < 60
    assert status(api.base, old["api_key"]) == 200
    assert status(api.base, new["api_key"]) == 200


def test_the_new_key_inherits_expiry_and_environment_and_the_old_grace_is_capped(
    api: Api, user: str, redis_server: RedisProcess
) -> None:
    [old] = store_create(redis_server.url, user, seconds=3600, environment="test")
    new = rotated(api, user, old["id"], {"grace_period_seconds": 604800})
    assert new["environment"] == "test" and new["api_key"].startswith("sk_test_")
    own_expiry = datetime.fromtimestamp(old["expires"], UTC)
    assert new["expires_at"] == own_expiry.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    items = listing(api, user)
    assert items[old["id"]]["expires_at"] == new["expires_at"]  # not a week: its own expiry


def test_with_grace_zero_the_old_key_stops_at_once_on_every_instance(
    api: Api, second: SidecarProcess, user: str
) -> None:
    old = api.create_key(user)
    for base in (api.base, second.url):
        assert status(base, old["api_key"]) == 200  # cached on both
    new = rotated(api, user, old["id"], {"grace_period_seconds": 0})
    assert status(api.base, old["api_key"]) == 401  # the rotating instance: at once
    started = time.monotonic()
    wait_until(lambda: status(second.url, old["api_key"]) == 401, timeout=PROPAGATION_DEADLINE)
    assert time.monotonic() - started < PROPAGATION_DEADLINE
    assert status(second.url, new["api_key"]) == 200
    item = listing(api, user)[old["id"]]
    assert item["is_active"] is False and item["revoked_reason"] is None


def test_when_the_grace_ends_the_old_key_fails_on_every_instance_within_1s(
    api: Api, second: SidecarProcess, user: str, redis_client: redis.Redis
) -> None:
    old = api.create_key(user)
    instances = [api.base, second.url]
    for base in instances:
        assert status(base, old["api_key"]) == 200
    rotated(api, user, old["id"], {"grace_period_seconds": 2})
    grace_end = datetime.fromisoformat(
        listing(api, user)[old["id"]]["expires_at"].replace("Z", "+00:00")
    ).timestamp()
    for base in instances:  # re-cached with the new deadline after the rotation's message
        assert status(base, old["api_key"]) == 200
    publishes = call_counts(redis_client).get("publish", 0)

    give_up = grace_end + 5
    with ThreadPoolExecutor(2) as pool:
        watched = pool.map(lambda base: served_until(base, old["api_key"], give_up), instances)
        for last_ok, first_refused in watched:
            assert last_ok < grace_end + 0.05
            assert first_refused - grace_end < PROPAGATION_DEADLINE
    assert call_counts(redis_client).get("publish", 0) == publishes  # the end needs no message


def test_of_concurrent_rotations_exactly_one_succeeds(
    api: Api, second: SidecarProcess, user: str
) -> None:
    old = api.create_key(user)
    token = make_token(user)

    def attempt(index: int) -> httpx.Response:
        base = (api.base, second.url)[index % 2]
        return httpx.post(
            f"{base}/api/v1/api-keys/{old['id']}/rotate",
            headers={"Authorization": f"Bearer {token}"},
            json={"grace_period_seconds": 60},
            timeout=30,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(attempt, range(16)))
    winners = [r for r in responses if r.status_code == 201]
    assert len(winners) == 1
    remember_secret(winners[0].json()["api_key"])
    for response in responses:
        if response.status_code != 201:
            assert (response.status_code, response.json()) == (409, ROTATED)
    assert len(listing(api, user)) == 2


def test_rotation_works_at_the_limit_and_the_old_key_stops_counting(api: Api, user: str) -> None:
    keys = [api.create_key(user) for _ in range(10)]
    rotated(api, user, keys[0]["id"])
    refused = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert refused.status_code == 400  # the new key took the slot
    api.http.delete(f"/api/v1/api-keys/{keys[1]['id']}", headers=api.bearer(user))
    api.create_key(user)


def test_unknown_foreign_and_malformed_ids(api: Api, user: str, redis_client: redis.Redis) -> None:
    foreign = api.create_key(f"{user}-owner")
    before = user_state(redis_client, f"{user}-owner")
    for key_id in (str(uuid.uuid4()), foreign["id"]):
        response = rotate(api, user, key_id)
        assert (response.status_code, response.json()) == (404, {"detail": "API key not found"})
    malformed = rotate(api, user, "not-a-uuid")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["path", "api_key_id"]
    assert user_state(redis_client, f"{user}-owner") == before
    assert user_state(redis_client, user) == {}


def test_rotating_needs_a_jwt(api: Api, user: str) -> None:
    key = api.create_key(user)
    response = api.http.post(
        f"/api/v1/api-keys/{key['id']}/rotate", headers={"X-API-Key": key["api_key"]}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("grace", [-1, 604801, "60", 1.5, True, None])
def test_bad_grace_periods_get_422_and_change_nothing(
    api: Api, user: str, redis_client: redis.Redis, grace: Any
) -> None:
    key = api.create_key(user)
    before = user_state(redis_client, user)
    response = rotate(api, user, key["id"], {"grace_period_seconds": grace})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "grace_period_seconds"]
    assert user_state(redis_client, user) == before


@pytest.mark.parametrize("grace", [0, 604800])
def test_grace_period_bounds_are_accepted(api: Api, user: str, grace: int) -> None:
    rotated(api, user, api.create_key(user)["id"], {"grace_period_seconds": grace})


def test_a_rotated_key_in_its_grace_is_409_already_rotated(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    old = api.create_key(user)
    rotated(api, user, old["id"])
    before = user_state(redis_client, user)
    response = rotate(api, user, old["id"])
    assert (response.status_code, response.json()) == (409, ROTATED)
    assert user_state(redis_client, user) == before


def test_not_active_wins_over_already_rotated(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    revoked = api.create_key(user)
    api.http.delete(f"/api/v1/api-keys/{revoked['id']}", headers=api.bearer(user))
    ended = api.create_key(user)
    rotated(api, user, ended["id"], {"grace_period_seconds": 0})  # rotated, grace over
    in_grace_then_revoked = api.create_key(user)
    rotated(api, user, in_grace_then_revoked["id"])
    api.http.delete(f"/api/v1/api-keys/{in_grace_then_revoked['id']}", headers=api.bearer(user))
    before = user_state(redis_client, user)
    for key in (revoked, ended, in_grace_then_revoked):
        response = rotate(api, user, key["id"])
        assert (response.status_code, response.json()) == (409, NOT_ACTIVE), key
    assert user_state(redis_client, user) == before
    item = listing(api, user)[in_grace_then_revoked["id"]]
    assert item["revoked_reason"] == "revoked" and item["rotated_to"] is not None


def test_an_expired_key_cannot_be_rotated(api: Api, user: str, redis_server: RedisProcess) -> None:
    [key] = store_create(redis_server.url, user, seconds=0.5)
    while time.time() <= key["expires"]:
        time.sleep(key["expires"] - time.time() + 0.01)
    response = rotate(api, user, key["id"])
    assert (response.status_code, response.json()) == (409, NOT_ACTIVE)


def test_rotation_of_an_empty_body_uses_the_default_grace(api: Api, user: str) -> None:
    old = api.create_key(user)
    response = api.http.post(
        f"/api/v1/api-keys/{old['id']}/rotate", content=b"", headers=api.bearer(user)
    )
    assert response.status_code == 201
    remember_secret(response.json()["api_key"])
    end = listing(api, user)[old["id"]]["expires_at"]
    moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
    assert timedelta(hours=23) < moment - datetime.now(UTC) <= timedelta(days=1)
