"""Scoped and address-restricted keys (SPEC Part 3): created, stored, listed, and
enforced after authentication and before the rate limit, on a real sidecar process
with a real Redis and upstream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import make_token
from tests.harness import SidecarProcess, remember_secret, wait_until
from tests.lifecycle_helpers import call_counts, user_state
from tests.upstream_app import RecordingUpstream

SCOPES = {
    "analysis:read": [{"methods": ["GET", "HEAD"], "paths": ["/api/v1/analysis/"]}],
    "analysis:write": [
        {"methods": ["POST", "PUT", "PATCH", "DELETE"], "paths": ["/api/v1/analysis/"]}
    ],
    "analysis:submit": [{"methods": ["POST"], "paths": ["/api/v1/analysis/"]}],
    "reports:read": [{"methods": ["GET"], "paths": ["/api/v1/reports/", "/api/v1/exports"]}],
}
BUDGET = 1000  # per day: a refill takes 86 s, far longer than the test
PROXY = "127.0.0.2"  # a trusted proxy: the tests connect from it to send X-Forwarded-For


@pytest.fixture(scope="module")
def scoped(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    config = config_for(
        server={"trusted_proxies": [PROXY]},
        auth={"scopes": SCOPES, "public_paths": ["/api/v1/auth/"]},
        rate_limits={"enabled": True, "default": {"requests": BUDGET, "per_seconds": 86400}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("scoped")).start()
    yield process
    process.stop()


@pytest.fixture
def http(scoped: SidecarProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scoped.url, timeout=10) as client:
        yield client


@pytest.fixture
def via_proxy(scoped: SidecarProcess) -> Iterator[httpx.Client]:
    """A client connecting from the trusted proxy's address."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=scoped.url, timeout=10, transport=transport) as client:
        yield client


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


def create(http: httpx.Client, user: str, **body: Any) -> dict[str, Any]:
    response = http.post("/api/v1/api-keys/", json=body, headers=bearer(user))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    remember_secret(created["api_key"])
    return created


def call(
    http: httpx.Client, method: str, path: str, key: str, **headers: str
) -> tuple[httpx.Response, str]:
    rid = uuid.uuid4().hex
    response = http.request(
        method, path, headers={"X-API-Key": key, "X-Request-ID": rid, **headers}
    )
    return response, rid


def seen(recorder: RecordingUpstream, rid: str) -> list[Any]:
    return [r for r in recorder.received if r.header("x-request-id") == rid]


# --- scopes ---------------------------------------------------------------------------


def test_a_scoped_key_is_created_listed_and_forwarded_with_its_scopes(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    created = create(http, user, scopes=["analysis:read", "reports:read"])
    assert created["scopes"] == ["analysis:read", "reports:read"]
    assert created["allowed_ips"] is None
    listed = http.get("/api/v1/api-keys/", headers=bearer(user)).json()["api_keys"]
    assert [(k["scopes"], k["allowed_ips"]) for k in listed] == [
        (["analysis:read", "reports:read"], None)
    ]
    response, rid = call(http, "GET", "/api/v1/analysis/42", created["api_key"])
    assert response.status_code == 200
    [forwarded] = seen(recorder, rid)
    assert forwarded.header("x-callcov-key-scopes") == "analysis:read reports:read"


def test_a_scoped_key_on_a_route_outside_its_scopes_gets_403_uncharged_and_unforwarded(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    key = create(http, user, scopes=["analysis:read"])["api_key"]
    first, _ = call(http, "GET", "/api/v1/analysis/", key)
    assert first.status_code == 200
    remaining = int(first.headers["x-ratelimit-remaining"])
    for _ in range(3):
        refused, rid = call(http, "POST", "/api/v1/analysis/", key)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "API key does not have the required scope"}
        assert refused.headers["x-callcov-accepted-scopes"] == "analysis:submit,analysis:write"
        assert seen(recorder, rid) == []
    again, _ = call(http, "GET", "/api/v1/analysis/", key)
    assert int(again.headers["x-ratelimit-remaining"]) == remaining - 1  # the 403s cost nothing


def test_a_route_no_scope_allows_gets_403_without_the_accepted_scopes_header(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    key = create(http, user, scopes=["reports:read"])["api_key"]
    refused, rid = call(http, "GET", "/api/v1/billing/", key)
    assert refused.status_code == 403
    assert "x-callcov-accepted-scopes" not in refused.headers
    assert seen(recorder, rid) == []
    # Prefixes match segment by segment, case-insensitively, on the normalised path.
    assert call(http, "GET", "/api/v1/exportsX", key)[0].status_code == 403
    assert call(http, "GET", "/API/v1/exports/today", key)[0].status_code == 200
    assert call(http, "GET", "/api/v1/billing/../reports/1", key)[0].status_code == 200


def test_unrestricted_keys_send_a_star_and_client_copies_of_the_header_are_stripped(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    key = create(http, user)["api_key"]
    spoofed = {"X-CALLCOV-KEY-SCOPES": "admin", "x_callcov_key_scopes": "admin"}
    response, rid = call(http, "DELETE", "/anything/at/all", key, **spoofed)
    assert response.status_code == 200
    [forwarded] = seen(recorder, rid)
    values = [
        v for k, v in forwarded.headers if k.lower().replace("_", "-") == "x-callcov-key-scopes"
    ]
    assert values == ["*"]


def test_jwt_requests_and_public_paths_ignore_scopes(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    key = create(http, user, scopes=["reports:read"])["api_key"]
    public, rid = call(http, "POST", "/api/v1/auth/login", key, **{"X-CallCov-Key-Scopes": "x"})
    assert public.status_code == 200
    [forwarded] = seen(recorder, rid)
    assert forwarded.header("x-callcov-key-scopes") is None
    jwt_call = http.post("/api/v1/analysis/", headers=bearer(user))
    assert jwt_call.status_code == 200


# --- bad input ------------------------------------------------------------------------

BAD_CREATES: list[tuple[dict[str, Any], list[Any]]] = [
    ({"scopes": []}, ["body", "scopes"]),
    ({"scopes": ["analysis:read", "analysis:read"]}, ["body", "scopes"]),
    ({"scopes": ["analysis:read", "admin"]}, ["body", "scopes", 1]),
    ({"scopes": "analysis:read"}, ["body", "scopes"]),
    ({"scopes": [7]}, ["body", "scopes", 0]),
    ({"allowed_ips": []}, ["body", "allowed_ips"]),
    ({"allowed_ips": ["203.0.113.300"]}, ["body", "allowed_ips", 0]),
    ({"allowed_ips": ["10.0.0.1", "fe80::1%eth0"]}, ["body", "allowed_ips", 1]),
    ({"allowed_ips": ["10.0.0.0/33"]}, ["body", "allowed_ips", 0]),
    ({"allowed_ips": [f"10.0.{i // 256}.{i % 256}" for i in range(101)]}, ["body", "allowed_ips"]),
    ({"allowed_ips": "10.0.0.1"}, ["body", "allowed_ips"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_CREATES)
def test_bad_scopes_or_addresses_get_422_and_redis_is_untouched(
    http: httpx.Client, redis_client: redis.Redis, user: str, body: dict[str, Any], loc: list[Any]
) -> None:
    create(http, user, description="already here")  # so the user's state is not empty
    before, writes = user_state(redis_client, user), call_counts(redis_client).get("evalsha", 0)
    response = http.post("/api/v1/api-keys/", json=body, headers=bearer(user))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert {"type", "msg", "input"} <= set(error)
    assert user_state(redis_client, user) == before
    assert call_counts(redis_client).get("evalsha", 0) == writes  # no write script ran


# --- addresses ------------------------------------------------------------------------


def test_allowed_ips_are_stored_normalised(http: httpx.Client, user: str) -> None:
    given = ["198.51.100.7", "203.0.113.9/24", "2001:db8::1/64", "::ffff:192.0.2.1", "1.2.3.4/32"]
    created = create(http, user, allowed_ips=given)
    expected = ["198.51.100.7/32", "203.0.113.0/24", "2001:db8::/64", "192.0.2.1/32", "1.2.3.4/32"]
    assert created["allowed_ips"] == expected
    listed = http.get("/api/v1/api-keys/", headers=bearer(user)).json()["api_keys"]
    assert listed[0]["allowed_ips"] == expected


def test_without_a_trusted_proxy_the_peer_is_the_client_and_forwarded_for_is_ignored(
    http: httpx.Client, recorder: RecordingUpstream, user: str
) -> None:
    inside = create(http, user, allowed_ips=["127.0.0.0/8"])["api_key"]
    assert call(http, "GET", "/a", inside)[0].status_code == 200
    elsewhere = create(http, user, allowed_ips=["203.0.113.0/24"])["api_key"]
    refused, rid = call(http, "GET", "/a", elsewhere, **{"X-Forwarded-For": "203.0.113.9"})
    assert refused.status_code == 403
    assert refused.json() == {"detail": "API key is not allowed from this address"}
    assert seen(recorder, rid) == []


@pytest.mark.parametrize(
    ("allowed", "forwarded_for", "status"),
    [
        (["203.0.113.0/24"], "203.0.113.9", 200),
        (["203.0.113.0/24"], "198.51.100.1", 403),
        (["203.0.113.0/24"], "::ffff:203.0.113.9", 200),  # IPv4-mapped counts as IPv4
        (["203.0.113.0/24"], "203.0.113.9, 198.51.100.1", 403),  # the hop the proxy saw
        (["2001:db8::/64"], "2001:db8::5", 200),
        (["2001:db8::/64"], "2001:db8:0:1::5", 403),
        (["2001:db8::5"], "2001:db8::5", 200),
        (["127.0.0.1"], "2001:db8::5", 403),
    ],
)
def test_behind_a_trusted_proxy_the_forwarded_address_is_checked(
    http: httpx.Client,
    via_proxy: httpx.Client,
    recorder: RecordingUpstream,
    user: str,
    allowed: list[str],
    forwarded_for: str,
    status: int,
) -> None:
    key = create(http, user, allowed_ips=allowed)["api_key"]
    response, rid = call(via_proxy, "GET", "/a", key, **{"X-Forwarded-For": forwarded_for})
    assert response.status_code == status
    assert len(seen(recorder, rid)) == (1 if status == 200 else 0)


def test_the_address_check_comes_before_the_scope_check(http: httpx.Client, user: str) -> None:
    key = create(http, user, scopes=["reports:read"], allowed_ips=["203.0.113.0/24"])["api_key"]
    refused, _ = call(http, "POST", "/api/v1/analysis/", key)
    assert refused.status_code == 403
    assert refused.json() == {"detail": "API key is not allowed from this address"}
    assert "x-callcov-accepted-scopes" not in refused.headers


def test_over_ipv6_the_peer_address_is_checked_and_a_mapped_ipv4_peer_counts_as_ipv4(
    config_for: Any, spawn: Any, user: str, recorder: RecordingUpstream
) -> None:
    config = config_for(auth={"scopes": SCOPES})
    config["server"]["host"] = "::"  # dual-stack: IPv4 peers arrive as ::ffff:127.0.0.1
    spawn(config)
    port = config["server"]["port"]
    with (
        httpx.Client(base_url=f"http://[::1]:{port}", timeout=10) as over_v6,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as over_v4,
    ):
        v6_only = create(over_v6, user, allowed_ips=["::1"])["api_key"]
        v4_only = create(over_v6, user, allowed_ips=["127.0.0.1"])["api_key"]
        assert call(over_v6, "GET", "/a", v6_only)[0].status_code == 200
        assert call(over_v4, "GET", "/a", v4_only)[0].status_code == 200
        for client, key in ((over_v6, v4_only), (over_v4, v6_only)):
            refused, rid = call(client, "GET", "/a", key)
            assert refused.status_code == 403
            assert seen(recorder, rid) == []


# --- a scope the config no longer has -------------------------------------------------


def test_a_scope_removed_from_the_config_grants_nothing_and_is_warned_about_at_start(
    config_for: Any, spawn: Any, user: str, recorder: RecordingUpstream
) -> None:
    legacy = {"legacy:all": [{"methods": ["GET", "POST"], "paths": ["/"]}]}
    before = spawn(config_for(auth={"scopes": {**SCOPES, **legacy}}))
    with httpx.Client(base_url=before.url, timeout=10) as client:
        mixed = create(client, user, scopes=["legacy:all", "reports:read"])["api_key"]
        only = create(client, user, scopes=["legacy:all"])["api_key"]
        assert call(client, "POST", "/api/v1/analysis/", only)[0].status_code == 200
    after = spawn(config_for(auth={"scopes": SCOPES}))
    wait_until(lambda: "scope legacy:all" in after.logs())
    [line] = [line for line in after.logs().splitlines() if "scope legacy:all" in line]
    assert "WARNING" in line
    assert "2 active key(s) have it" in line
    with httpx.Client(base_url=after.url, timeout=10) as client:
        refused, rid = call(client, "POST", "/api/v1/analysis/", mixed)
        assert refused.status_code == 403
        assert refused.headers["x-callcov-accepted-scopes"] == "analysis:submit,analysis:write"
        assert seen(recorder, rid) == []
        allowed, rid = call(client, "GET", "/api/v1/reports/1", mixed)
        assert allowed.status_code == 200
        assert seen(recorder, rid)[0].header("x-callcov-key-scopes") == "reports:read"
        for path in ("/api/v1/reports/1", "/"):  # nothing left: refused everywhere
            assert call(client, "GET", path, only)[0].status_code == 403
