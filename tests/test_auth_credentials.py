"""SPEC.md "Credentials" and the 401 contract, against a real sidecar, upstream and Redis."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import redis

from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token
from tests.upstream_app import RecordingUpstream

UNAUTHORIZED = {"detail": "Could not validate credentials"}
PATH = "/api/v1/analysis/"


def hget_calls(client: redis.Redis) -> int:
    """How many HGETs the test's own Redis has served: key verification is one HGET."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


def assert_unauthorized(response: httpx.Response, recorder: RecordingUpstream) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == UNAUTHORIZED
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"]
    assert recorder.received == [] and recorder.aborted == 0


def with_bad_checksum(key: str) -> str:
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


def well_formed_unknown_key() -> str:
    return keyformat.generate()


def test_x_api_key_authenticates(api: Api, user: str, recorder: RecordingUpstream) -> None:
    key = api.create_key(user)
    response = api.http.get(PATH, headers={"X-API-Key": key["api_key"]})
    assert response.status_code == 200, response.text
    seen = recorder.received[-1]
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-auth-method") == "api_key"
    assert seen.header("x-callcov-key-id") == key["id"]
    assert seen.header("x-api-key") is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_sk_is_an_api_key_and_is_never_forwarded(
    api: Api, user: str, recorder: RecordingUpstream, scheme: str
) -> None:
    key = api.create_key(user)
    response = api.http.get(PATH, headers={"Authorization": f"{scheme} {key['api_key']}"})
    assert response.status_code == 200, response.text
    seen = recorder.received[-1]
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-auth-method") == "api_key"
    assert seen.header("x-callcov-key-id") == key["id"]
    assert seen.header("authorization") is None


def test_bearer_jwt_authenticates_and_is_forwarded(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    token = make_token(user)
    response = api.http.get(PATH, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    seen = recorder.received[-1]
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-auth-method") == "jwt"
    assert seen.header("x-callcov-key-id") is None
    assert seen.header("authorization") == f"Bearer {token}"


def test_x_api_key_wins_over_a_jwt(api: Api, user: str, recorder: RecordingUpstream) -> None:
    key = api.create_key(user)
    other = user + "-jwt"
    headers = {"X-API-Key": key["api_key"], "Authorization": f"Bearer {make_token(other)}"}
    response = api.http.get(PATH, headers=headers)
    assert response.status_code == 200, response.text
    seen = recorder.received[-1]
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-auth-method") == "api_key"
    # The JWT was not the credential used: it does not travel as a second identity.
    assert seen.header("authorization") is None


@pytest.mark.parametrize(
    "bad_key",
    [
        "",
        "not-a-key",
        "sk_live_short",
        "well-formed-unknown",
        "bad-checksum",
        "sk_test_" + "A" * 48,
    ],
)
def test_x_api_key_must_be_valid_even_next_to_a_valid_jwt(
    api: Api, user: str, recorder: RecordingUpstream, bad_key: str
) -> None:
    if bad_key == "well-formed-unknown":
        bad_key = well_formed_unknown_key()
    elif bad_key == "bad-checksum":
        bad_key = with_bad_checksum(api.create_key(user)["api_key"])
    headers = {"X-API-Key": bad_key, **api.bearer(user)}
    assert_unauthorized(api.http.get(PATH, headers=headers), recorder)


def _rejected_credentials(user: str) -> dict[str, list[tuple[str, str | bytes]]]:
    now = int(time.time())
    expired = make_token(user, ttl=-60)
    wrong_secret = make_token(user, secret="another-secret-0123456789-abcdefghijklmnop")
    unsigned = pyjwt.encode({"sub": user, "exp": now + 600}, key=None, algorithm="none")
    unknown = well_formed_unknown_key()
    return {
        "none": [],
        "empty x-api-key": [("X-API-Key", "")],
        "malformed x-api-key": [("X-API-Key", "sk_live_not_a_real_key")],
        "non-ascii x-api-key": [("X-API-Key", b"sk_live_\xff\xfe")],
        "bad checksum": [("X-API-Key", with_bad_checksum(unknown))],
        "unknown key": [("X-API-Key", unknown)],
        "unknown bearer key": [("Authorization", f"Bearer {unknown}")],
        "bearer without token": [("Authorization", "Bearer")],
        "basic auth": [("Authorization", "Basic dXNlcjpwYXNz")],
        "token without scheme": [("Authorization", make_token(user))],
        "bearer tab key": [("Authorization", f"Bearer\t{unknown}")],
        "expired jwt": [("Authorization", f"Bearer {expired}")],
        "jwt, wrong secret": [("Authorization", f"Bearer {wrong_secret}")],
        "jwt, alg none": [("Authorization", f"Bearer {unsigned}")],
        "garbage jwt": [("Authorization", "Bearer eyJ.garbage.x")],
        "two jwts": [
            ("Authorization", f"Bearer {make_token(user)}"),
            ("Authorization", f"Bearer {make_token(user)}"),
        ],
    }


@pytest.mark.parametrize("case", list(_rejected_credentials("x")))
def test_rejected_credentials_get_the_exact_401_and_nothing_reaches_the_upstream(
    api: Api, user: str, recorder: RecordingUpstream, case: str
) -> None:
    headers = _rejected_credentials(user)[case]
    for method in ("GET", "POST"):
        response = api.http.request(method, PATH + "?q=1", headers=headers, content=b"body")
        assert_unauthorized(response, recorder)


def test_duplicate_credential_headers_are_rejected(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    """Two keys, or a key and a token in two Authorization headers: which one would the
    upstream believe? Neither is used."""
    mine = api.create_key(user)["api_key"]
    other = api.create_key(user)["api_key"]
    for headers in (
        [("X-API-Key", mine), ("X-API-Key", other)],
        [("Authorization", f"Bearer {mine}"), ("Authorization", f"Bearer {make_token(user)}")],
        [("Authorization", f"Bearer {make_token(user)}"), ("Authorization", f"Bearer {mine}")],
    ):
        assert_unauthorized(api.http.get(PATH, headers=headers), recorder)


def test_malformed_keys_are_rejected_without_a_redis_round_trip(
    api: Api, user: str, recorder: RecordingUpstream, redis_client: redis.Redis
) -> None:
    valid = api.create_key(user)["api_key"]
    malformed = [
        with_bad_checksum(valid),
        valid[:-1],
        valid + "A",
        valid.replace("sk_live_", "sk_test_"),
        valid.replace("sk_live_", "SK_LIVE_"),
        valid[:20] + "-" + valid[21:],
        "sk_live_" + "0" * 48,
    ]
    before = hget_calls(redis_client)
    for value in malformed:
        for headers in ({"X-API-Key": value}, {"Authorization": f"Bearer {value}"}):
            assert_unauthorized(api.http.get(PATH, headers=headers), recorder)
    assert hget_calls(redis_client) == before
    # The counter does count: a well-formed unknown key costs exactly one lookup.
    assert_unauthorized(
        api.http.get(PATH, headers={"X-API-Key": well_formed_unknown_key()}), recorder
    )
    assert hget_calls(redis_client) == before + 1


def test_unknown_keys_do_not_hammer_redis(
    api: Api, recorder: RecordingUpstream, redis_client: redis.Redis
) -> None:
    unknown = well_formed_unknown_key()
    before = hget_calls(redis_client)
    for _ in range(25):
        assert_unauthorized(api.http.get(PATH, headers={"X-API-Key": unknown}), recorder)
    # The first miss is remembered (auth.api_keys.negative_cache_ttl_seconds, 5 s).
    assert hget_calls(redis_client) - before == 1


def test_a_verified_key_is_served_from_the_cache(
    api: Api, user: str, recorder: RecordingUpstream, redis_client: redis.Redis
) -> None:
    key = api.create_key(user)["api_key"]
    assert api.http.get(PATH, headers={"X-API-Key": key}).status_code == 200
    before = hget_calls(redis_client)
    for _ in range(10):
        assert api.http.get(PATH, headers={"X-API-Key": key}).status_code == 200
    assert hget_calls(redis_client) == before
    assert len(recorder.received) == 11
