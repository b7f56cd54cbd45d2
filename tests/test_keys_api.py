"""SPEC.md "Endpoints the sidecar owns", over HTTP against a real sidecar and Redis."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token

UNAUTHORIZED = {"detail": "Could not validate credentials"}
LIMIT_MESSAGE = "Maximum number of API keys (10) reached. Please expire unused keys."
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_create_returns_the_full_key_once_in_the_documented_shape(api: Api, user: str) -> None:
    response = api.http.post(
        "/api/v1/api-keys/", json={"description": "Production"}, headers=api.bearer(user)
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id", "api_key", "key_prefix", "description", "created_at", "expires_at", "environment",
        "scopes", "allowed_ips",
    }  # fmt: skip
    assert body["scopes"] is None and body["allowed_ips"] is None
    uuid.UUID(body["id"])
    assert keyformat.parse(body["api_key"]) is not None
    assert body["key_prefix"] == body["api_key"][:14]
    assert body["description"] == "Production"
    assert ISO_UTC.match(body["created_at"])
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60


@pytest.mark.parametrize("path", ["/api/v1/api-keys/", "/api/v1/api-keys"])
@pytest.mark.parametrize("content", [b"", b"{}", b"  "])
def test_create_accepts_empty_body_on_both_paths(
    api: Api, user: str, path: str, content: bytes
) -> None:
    response = api.http.post(path, content=content, headers=api.bearer(user))
    assert response.status_code == 201, response.text
    assert response.json()["description"] is None


def test_create_accepts_null_description(api: Api, user: str) -> None:
    response = api.http.post(
        "/api/v1/api-keys/", json={"description": None}, headers=api.bearer(user)
    )
    assert response.status_code == 201
    assert response.json()["description"] is None


def test_description_of_exactly_500_characters_is_accepted(api: Api, user: str) -> None:
    response = api.http.post(
        "/api/v1/api-keys/", json={"description": "d" * 500}, headers=api.bearer(user)
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("content", "error_type", "loc"),
    [
        (b"{not json", "json_invalid", ["body", 1]),
        (b"[1, 2]", "model_attributes_type", ["body"]),
        (b'"text"', "model_attributes_type", ["body"]),
        (b'{"description": 42}', "string_type", ["body", "description"]),
        (b'{"description": "' + b"x" * 501 + b'"}', "string_too_long", ["body", "description"]),
    ],
)
def test_create_rejects_bad_bodies_in_fastapi_shape(
    api: Api, user: str, content: bytes, error_type: str, loc: list[object]
) -> None:
    headers = {**api.bearer(user), "Content-Type": "application/json"}
    response = api.http.post("/api/v1/api-keys/", content=content, headers=headers)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and len(detail) == 1
    assert {"type", "loc", "msg", "input"} <= set(detail[0])
    assert detail[0]["type"] in (error_type, "model_type")
    assert detail[0]["loc"] == loc
    assert api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()["total"] == 0


def test_eleventh_key_is_refused_with_the_exact_message(api: Api, user: str) -> None:
    for _ in range(10):
        api.create_key(user)
    response = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert response.status_code == 400
    assert response.json() == {"detail": LIMIT_MESSAGE}
    assert api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()["total"] == 10


def test_expiring_a_key_frees_a_slot(api: Api, user: str) -> None:
    keys = [api.create_key(user) for _ in range(10)]
    deleted = api.http.delete(f"/api/v1/api-keys/{keys[0]['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    api.create_key(user)  # the freed slot
    again = api.http.post("/api/v1/api-keys/", json={}, headers=api.bearer(user))
    assert again.status_code == 400


def test_fifty_parallel_creates_leave_exactly_ten_active_keys(api: Api, user: str) -> None:
    token = make_token(user)

    def create(_: int) -> int:
        with httpx.Client(base_url=api.base, timeout=30) as client:
            response = client.post(
                "/api/v1/api-keys/", json={}, headers={"Authorization": f"Bearer {token}"}
            )
            return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(create, range(50)))
    assert statuses.count(201) == 10
    assert statuses.count(400) == 40
    listing = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert listing["total"] == 10


def test_list_shows_own_keys_newest_first_without_secrets(api: Api, user: str) -> None:
    first = api.create_key(user, "first")
    second = api.create_key(user, "second")
    api.create_key(f"{user}-other", "someone else's")
    response = api.http.get("/api/v1/api-keys/", headers=api.bearer(user))
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 2
    assert [k["id"] for k in body["api_keys"]] == [second["id"], first["id"]]
    item = body["api_keys"][0]
    assert set(item) == {
        "id", "key_prefix", "description", "is_active", "last_used_at",
        "expires_at", "created_at", "updated_at", "environment", "rotated_to", "revoked_reason",
        "scopes", "allowed_ips",
    }  # fmt: skip
    assert item["scopes"] is None and item["allowed_ips"] is None
    assert item["is_active"] is True
    assert item["last_used_at"] is None
    assert item["expires_at"] is None
    assert item["key_prefix"] == second["key_prefix"]
    assert second["api_key"] not in response.text


def test_list_without_trailing_slash_is_served_directly(api: Api, user: str) -> None:
    api.create_key(user)
    response = api.http.get("/api/v1/api-keys", headers=api.bearer(user))
    assert response.status_code == 200
    assert response.json()["total"] == 1


def test_expired_keys_are_listed_only_on_request(api: Api, user: str) -> None:
    kept = api.create_key(user)
    gone = api.create_key(user)
    api.http.delete(f"/api/v1/api-keys/{gone['id']}", headers=api.bearer(user))
    default = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert [k["id"] for k in default["api_keys"]] == [kept["id"]]
    everything = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "true"}, headers=api.bearer(user)
    ).json()
    assert everything["total"] == 2
    audit = next(k for k in everything["api_keys"] if k["id"] == gone["id"])
    assert audit["is_active"] is False
    assert audit["expires_at"] is not None and ISO_UTC.match(audit["expires_at"])


def test_include_expired_must_be_a_boolean(api: Api, user: str) -> None:
    response = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "maybe"}, headers=api.bearer(user)
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "include_expired"]


def test_delete_answers_exactly_and_is_repeatable(api: Api, user: str) -> None:
    key = api.create_key(user)
    for _ in range(2):
        response = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
        assert response.status_code == 200
        assert response.json() == {"message": "API key expired successfully", "success": True}


def test_expired_key_stays_expired(api: Api, user: str, redis_client: object) -> None:
    key = api.create_key(user)
    api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    listing = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "1"}, headers=api.bearer(user)
    ).json()
    assert listing["api_keys"][0]["is_active"] is False


def test_delete_of_unknown_or_foreign_key_is_404(api: Api, user: str) -> None:
    foreign = api.create_key(f"{user}-owner")
    for key_id in (str(uuid.uuid4()), foreign["id"]):
        response = api.http.delete(f"/api/v1/api-keys/{key_id}", headers=api.bearer(user))
        assert response.status_code == 404
        assert response.json() == {"detail": "API key not found"}
    owner_view = api.http.get("/api/v1/api-keys/", headers=api.bearer(f"{user}-owner")).json()
    assert owner_view["api_keys"][0]["is_active"] is True


def test_delete_with_a_non_uuid_is_422(api: Api, user: str) -> None:
    response = api.http.delete("/api/v1/api-keys/not-a-uuid", headers=api.bearer(user))
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["path", "api_key_id"]
    assert detail["type"] == "uuid_parsing"
    assert detail["input"] == "not-a-uuid"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/api-keys/"), ("GET", "/api/v1/api-keys/"), ("GET", "/api/v1/api-keys"),
     ("DELETE", f"/api/v1/api-keys/{uuid.uuid4()}")],
)  # fmt: skip
def test_key_endpoints_refuse_everything_but_a_valid_jwt(
    api: Api, user: str, method: str, path: str
) -> None:
    key = api.create_key(user)["api_key"]
    now_expired = make_token(user, ttl=-10)
    wrong_secret = make_token(user, secret="another-secret-that-is-long-enough-0123456789")
    attempts: list[dict[str, str]] = [
        {},
        {"X-API-Key": key},
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key, **api.bearer(user)},
        {"Authorization": f"Bearer {now_expired}"},
        {"Authorization": f"Bearer {wrong_secret}"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": f"Basic {make_token(user)}"},
    ]
    for headers in attempts:
        response = api.http.request(method, path, headers=headers, json={})
        assert response.status_code == 401, headers
        assert response.json() == UNAUTHORIZED
        assert response.headers["www-authenticate"] == "Bearer"


def test_alg_none_token_is_refused(api: Api, user: str) -> None:
    token = _unsigned_token(user)
    response = api.http.get("/api/v1/api-keys/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_key_endpoints_never_reach_the_upstream(api: Api, user: str, recorder: object) -> None:
    api.create_key(user)
    api.http.get("/api/v1/api-keys/", headers=api.bearer(user))
    api.http.get("/api/v1/api-keys/")
    assert recorder.received == []  # type: ignore[attr-defined]


def _unsigned_token(user: str) -> str:
    import base64
    import json
    import time

    def part(data: dict[str, object]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = part({"alg": "none", "typ": "JWT"})
    return f"{header}.{part({'sub': user, 'exp': int(time.time()) + 600})}."


def test_an_expired_key_stops_working_on_the_next_request(api: Api, user: str) -> None:
    key = api.create_key(user)
    headers = {"X-API-Key": key["api_key"]}
    for _ in range(2):  # the second answer comes from this instance's cache
        assert api.http.get("/api/v1/analysis/", headers=headers).status_code == 200
    api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    response = api.http.get("/api/v1/analysis/", headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


def test_listing_active_keys_costs_what_the_active_keys_cost_not_the_history(
    api: Api, user: str, redis_client: redis.Redis
) -> None:
    kept = api.create_key(user, "kept")
    for _ in range(30):
        gone = api.create_key(user)
        api.http.delete(f"/api/v1/api-keys/{gone['id']}", headers=api.bearer(user))
    before = hgetall_calls(redis_client)
    default = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert [k["id"] for k in default["api_keys"]] == [kept["id"]]
    assert hgetall_calls(redis_client) - before == 1  # the one active record
    everything = api.http.get(
        "/api/v1/api-keys/", params={"include_expired": "true"}, headers=api.bearer(user)
    ).json()
    assert everything["total"] == 31


def test_a_rotated_key_in_its_grace_is_listed_as_active_after_its_successor(
    api: Api, user: str
) -> None:
    old = api.create_key(user, "old")
    rotated = api.http.post(f"/api/v1/api-keys/{old['id']}/rotate", headers=api.bearer(user))
    assert rotated.status_code == 201
    default = api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()
    assert [k["id"] for k in default["api_keys"]] == [rotated.json()["id"], old["id"]]
    assert all(k["is_active"] for k in default["api_keys"])


def hgetall_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))
