"""``PATCH /api/v1/api-keys/{id}`` (SPEC Part 3, "Updating a key"), rotation copying a
key's restrictions, and keys stored before restrictions existed. Real sidecar
processes (two where the change must hold on every instance), real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.harness import SidecarProcess, remember_secret
from tests.lifecycle_helpers import call_counts, user_state
from tests.test_key_upgrade import write_legacy_key
from tests.test_scoped_keys import SCOPES, bearer, call, create, seen
from tests.upstream_app import RecordingUpstream

LIST_ITEM = {
    "id", "key_prefix", "description", "is_active", "last_used_at", "expires_at",
    "created_at", "updated_at", "environment", "rotated_to", "revoked_reason", "scopes",
    "allowed_ips",
}  # fmt: skip


@pytest.fixture(scope="module")
def pair(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SidecarProcess, SidecarProcess]]:
    """Two instances on one Redis, both with the scopes configured."""
    config = config_for(auth={"scopes": SCOPES})
    first = SidecarProcess(config, tmp_path_factory.mktemp("update-a")).start()
    second = SidecarProcess(config_for(auth={"scopes": SCOPES}), tmp_path_factory.mktemp("b"))
    second.start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def http(pair: tuple[SidecarProcess, SidecarProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pair[0].url, timeout=10) as client:
        yield client


@pytest.fixture
def other(pair: tuple[SidecarProcess, SidecarProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pair[1].url, timeout=10) as client:
        yield client


def patch(http: httpx.Client, user: str, key_id: str, body: Any) -> httpx.Response:
    return http.patch(f"/api/v1/api-keys/{key_id}", json=body, headers=bearer(user))


def test_patch_changes_scopes_addresses_and_description_and_answers_a_list_item(
    http: httpx.Client, user: str
) -> None:
    created = create(http, user, description="ci", scopes=["analysis:read"])
    response = patch(
        http,
        user,
        created["id"],
        {"description": "ci, narrowed", "scopes": ["reports:read"], "allowed_ips": ["10.1.2.3/8"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == LIST_ITEM
    assert body["description"] == "ci, narrowed"
    assert body["scopes"] == ["reports:read"]
    assert body["allowed_ips"] == ["10.0.0.0/8"]
    assert body["is_active"] is True
    assert body["updated_at"] > body["created_at"]
    [listed] = http.get("/api/v1/api-keys/", headers=bearer(user)).json()["api_keys"]
    assert listed == body


def test_null_clears_scopes_and_addresses_and_absent_fields_stay(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    created = create(http, user, description="keep me", scopes=["reports:read"])
    key = created["api_key"]
    assert call(http, "POST", "/api/v1/analysis/", key)[0].status_code == 403
    cleared = patch(http, user, created["id"], {"scopes": None}).json()
    assert cleared["scopes"] is None and cleared["description"] == "keep me"
    response, rid = call(http, "POST", "/api/v1/analysis/", key)  # this instance: at once
    assert response.status_code == 200
    assert seen(recorder, rid)[0].header("x-callcov-key-scopes") == "*"
    fenced = patch(http, user, created["id"], {"allowed_ips": ["203.0.113.0/24"]}).json()
    assert fenced["allowed_ips"] == ["203.0.113.0/24"] and fenced["scopes"] is None
    assert call(http, "GET", "/a", key)[0].status_code == 403
    opened = patch(http, user, created["id"], {"allowed_ips": None, "description": None}).json()
    assert opened["allowed_ips"] is None and opened["description"] is None
    assert call(http, "GET", "/a", key)[0].status_code == 200


BAD_PATCHES: list[tuple[Any, list[Any]]] = [
    ({}, ["body"]),
    ({"expires_at": None, "environment": "test"}, ["body"]),  # none of the editable fields
    ({"scopes": []}, ["body", "scopes"]),
    ({"scopes": ["analysis:read", "nope"]}, ["body", "scopes", 1]),
    ({"allowed_ips": ["not an address"]}, ["body", "allowed_ips", 0]),
    ({"allowed_ips": ["10.0.0.1"] * 101}, ["body", "allowed_ips"]),
    ({"description": "x" * 501}, ["body", "description"]),
    ([{"scopes": None}], ["body"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_PATCHES)
def test_a_patch_with_nothing_valid_to_change_gets_422_and_redis_is_untouched(
    http: httpx.Client, redis_client: redis.Redis, user: str, body: Any, loc: list[Any]
) -> None:
    created = create(http, user, scopes=["analysis:read"])
    before, writes = user_state(redis_client, user), call_counts(redis_client).get("evalsha", 0)
    response = patch(http, user, created["id"], body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert user_state(redis_client, user) == before
    assert call_counts(redis_client).get("evalsha", 0) == writes


def test_an_empty_body_gets_422(http: httpx.Client, user: str) -> None:
    created = create(http, user)
    response = http.patch(f"/api/v1/api-keys/{created['id']}", headers=bearer(user))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_404_422_and_409_as_for_delete_and_rotate(http: httpx.Client, user: str) -> None:
    created = create(http, user)
    change = {"description": "x"}
    assert patch(http, "someone-else", created["id"], change).status_code == 404
    unknown = patch(http, user, str(uuid.uuid4()), change)
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "API key not found"})
    bad_id = patch(http, user, "not-a-uuid", change)
    assert bad_id.status_code == 422
    assert bad_id.json()["detail"][0]["loc"] == ["path", "api_key_id"]
    assert http.delete(f"/api/v1/api-keys/{created['id']}", headers=bearer(user)).status_code == 200
    revoked = patch(http, user, created["id"], change)
    assert (revoked.status_code, revoked.json()) == (409, {"detail": "API key is not active"})
    rotated_away = create(http, user)
    rotation = http.post(
        f"/api/v1/api-keys/{rotated_away['id']}/rotate",
        json={"grace_period_seconds": 0},
        headers=bearer(user),
    )
    assert rotation.status_code == 201
    remember_secret(rotation.json()["api_key"])
    expired = patch(http, user, rotated_away["id"], change)  # its grace is over: expired
    assert (expired.status_code, expired.json()) == (409, {"detail": "API key is not active"})


def test_only_a_jwt_may_patch(http: httpx.Client, user: str) -> None:
    created = create(http, user)
    response = http.patch(
        f"/api/v1/api-keys/{created['id']}",
        json={"description": "x"},
        headers={"X-API-Key": created["api_key"]},
    )
    assert response.status_code == 401


def test_a_patch_holds_on_the_other_instance_at_once(
    http: httpx.Client, other: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    created = create(http, user)
    key = created["api_key"]
    assert call(other, "POST", "/api/v1/analysis/", key)[0].status_code == 200  # now cached there
    started = time.monotonic()
    narrowed = patch(http, user, created["id"], {"scopes": ["analysis:read"]})
    assert narrowed.status_code == 200
    # The cache there would keep the old answer for cache_ttl_seconds (60 s); a refusal
    # well before that comes from the published change.
    deadline = started + 10
    while True:
        response, rid = call(other, "POST", "/api/v1/analysis/", key)
        if response.status_code == 403:
            break
        assert response.status_code == 200 and time.monotonic() < deadline
    print(f"\nPATCH seen by the other instance after {(time.monotonic() - started) * 1000:.0f} ms")
    assert seen(recorder, rid) == []
    assert call(other, "GET", "/api/v1/analysis/", key)[0].status_code == 200


def test_rotation_copies_scopes_and_addresses_and_the_old_key_keeps_them(
    http: httpx.Client, user: str
) -> None:
    created = create(http, user, scopes=["analysis:read"], allowed_ips=["127.0.0.1"])
    rotated = http.post(
        f"/api/v1/api-keys/{created['id']}/rotate",
        json={"grace_period_seconds": 3600},
        headers=bearer(user),
    )
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["scopes"] == ["analysis:read"] and new["allowed_ips"] == ["127.0.0.1/32"]
    remember_secret(new["api_key"])
    for key in (created["api_key"], new["api_key"]):
        assert call(http, "GET", "/api/v1/analysis/", key)[0].status_code == 200
        assert call(http, "POST", "/api/v1/analysis/", key)[0].status_code == 403
    listed = {
        k["id"]: k for k in http.get("/api/v1/api-keys/", headers=bearer(user)).json()["api_keys"]
    }
    assert listed[new["id"]]["scopes"] == ["analysis:read"]
    # The old key, in its grace, can still be narrowed on its own.
    narrowed = patch(http, user, created["id"], {"allowed_ips": ["203.0.113.0/24"]})
    assert narrowed.status_code == 200
    assert call(http, "GET", "/api/v1/analysis/", created["api_key"])[0].status_code == 403
    assert call(http, "GET", "/api/v1/analysis/", new["api_key"])[0].status_code == 200


def test_a_key_stored_before_restrictions_existed_works_and_can_be_patched(
    http: httpx.Client, redis_client: redis.Redis, recorder: RecordingUpstream, user: str
) -> None:
    legacy = write_legacy_key(redis_client, user, "old")
    response, rid = call(http, "DELETE", "/anything", legacy["api_key"])
    assert response.status_code == 200
    assert seen(recorder, rid)[0].header("x-callcov-key-scopes") == "*"
    [item] = http.get("/api/v1/api-keys/", headers=bearer(user)).json()["api_keys"]
    assert item["scopes"] is None and item["allowed_ips"] is None
    patched = patch(http, user, legacy["id"], {"scopes": ["reports:read"]})
    assert patched.status_code == 200
    assert patched.json()["description"] == "old"
    assert call(http, "DELETE", "/anything", legacy["api_key"])[0].status_code == 403
    assert call(http, "GET", "/api/v1/reports/1", legacy["api_key"])[0].status_code == 200
    rotated = http.post(f"/api/v1/api-keys/{legacy['id']}/rotate", json={}, headers=bearer(user))
    assert rotated.status_code == 201 and rotated.json()["scopes"] == ["reports:read"]
    remember_secret(rotated.json()["api_key"])
