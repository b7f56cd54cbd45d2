"""SPEC Part 2 "Usage": per-key, per-UTC-day counts of requests and 429s, written with
the existing last_used_at flush (no Redis command of their own per request)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.harness import (
    RedisProcess,
    ServerThread,
    SidecarProcess,
    base_config,
    merge,
    remember_secret,
    wait_until,
)
from tests.lifecycle_helpers import NS, PATH, call_counts
from tests.upstream_app import RecordingUpstream

FLUSH_EVERY = 0.5
LIMITED = "/limited/"
# Commands a proxied request makes with a cached key and rate limiting on, as INFO
# commandstats counts them: the rate limiter's EVALSHA and the TIME, GET and SET its
# script runs; nothing else (as before usage counting: the counts ride the flush).
COMMANDS_PER_REQUEST = {"evalsha": 1, "time": 1, "get": 1, "set": 1}


@pytest.fixture(scope="module")
def counting(
    quiet_redis: RedisProcess,
    upstream: tuple[RecordingUpstream, ServerThread],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SidecarProcess]:
    config = merge(
        base_config(redis_url=quiet_redis.url, upstream_url=upstream[1].url),
        {
            "auth": {"api_keys": {"last_used_flush_seconds": FLUSH_EVERY}},
            "rate_limits": {
                "enabled": True,
                "default": {"requests": 100000, "per_seconds": 60},
                "rules": [{"path": LIMITED, "requests": 3, "per_seconds": 600}],
            },
        },
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("key-usage")).start()
    yield process
    process.stop()


@pytest.fixture
def api(counting: SidecarProcess) -> Iterator[Api]:
    client = Api(counting.url)
    yield client
    client.http.close()


def usage(api: Api, user: str, key_id: str, **params: Any) -> Any:
    return api.http.get(f"/api/v1/api-keys/{key_id}/usage", params=params, headers=api.bearer(user))


def today() -> date:
    return datetime.now(UTC).date()


def test_requests_and_429s_are_counted_per_day_oldest_first_with_zeros(
    api: Api, user: str, quiet_redis: RedisProcess
) -> None:
    key = api.create_key(user)
    other = api.create_key(user)
    statuses = [
        api.http.get(path, headers={"X-API-Key": key["api_key"]}).status_code
        for path in [LIMITED] * 5 + [PATH] * 2
    ]
    assert statuses == [200, 200, 200, 429, 429, 200, 200]
    three_days_ago = (today() - timedelta(days=3)).isoformat()
    quiet_redis.client().hset(
        f"{NS}:usage:{key['id']}:{three_days_ago}", mapping={"requests": 4, "rate_limited": 1}
    )
    wait_until(lambda: usage(api, user, key["id"]).json()["total_requests"] == 11, timeout=5)
    body = usage(api, user, key["id"]).json()
    assert set(body) == {"id", "key_prefix", "days", "total_requests", "networks"}
    assert body["id"] == key["id"] and body["key_prefix"] == key["key_prefix"]
    expected_dates = [(today() - timedelta(days=back)).isoformat() for back in range(29, -1, -1)]
    assert [d["date"] for d in body["days"]] == expected_dates
    by_date = {d["date"]: d for d in body["days"]}
    assert by_date[today().isoformat()] == {
        "date": today().isoformat(), "requests": 7, "rate_limited": 2,
    }  # fmt: skip
    assert by_date[three_days_ago] == {"date": three_days_ago, "requests": 4, "rate_limited": 1}
    assert sum(d["requests"] for d in body["days"]) == 11
    others = [d for d in body["days"] if d["date"] not in (three_days_ago, today().isoformat())]
    assert all(d["requests"] == d["rate_limited"] == 0 for d in others)
    quiet = usage(api, user, other["id"]).json()
    assert quiet["total_requests"] == 0 and len(quiet["days"]) == 30


@pytest.mark.parametrize("days", [1, 7, 90])
def test_the_window_follows_days(api: Api, user: str, days: int) -> None:
    key = api.create_key(user)
    body = usage(api, user, key["id"], days=days).json()
    assert len(body["days"]) == days
    assert body["days"][-1]["date"] == today().isoformat()


@pytest.mark.parametrize("days", ["0", "91", "-1", "abc", "1.5", ""])
def test_days_out_of_range_get_422(api: Api, user: str, days: str) -> None:
    key = api.create_key(user)
    response = usage(api, user, key["id"], days=days)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "days"]


def test_unknown_foreign_and_malformed_ids(api: Api, user: str) -> None:
    foreign = api.create_key(f"{user}-owner")
    for key_id in (str(uuid.uuid4()), foreign["id"]):
        response = usage(api, user, key_id)
        assert (response.status_code, response.json()) == (404, {"detail": "API key not found"})
    assert usage(api, user, "nope").json()["detail"][0]["loc"] == ["path", "api_key_id"]
    key = api.create_key(user)
    with_key = api.http.get(
        f"/api/v1/api-keys/{key['id']}/usage", headers={"X-API-Key": key["api_key"]}
    )
    assert with_key.status_code == 401


def test_a_proxied_request_costs_no_new_redis_command(
    api: Api, user: str, quiet_redis: RedisProcess
) -> None:
    """1,000 requests with a cached key and rate limiting on: one EVALSHA each, as
    before usage counting; everything else is per flush, not per request."""
    key = api.create_key(user)
    headers = {"X-API-Key": key["api_key"]}
    assert api.http.get(PATH, headers=headers).status_code == 200  # cached from here on
    client = quiet_redis.client()
    wait_until(lambda: usage(api, user, key["id"]).json()["total_requests"] == 1, timeout=5)
    before = call_counts(client)
    started = time.monotonic()
    requests = 1000
    for _ in range(requests):
        assert api.http.get(PATH, headers=headers).status_code == 200
    elapsed = time.monotonic() - started
    moved = {name: calls - before.get(name, 0) for name, calls in call_counts(client).items()}
    assert moved.get("hget", 0) == 0  # the key came from the cache throughout
    for name, per_request in COMMANDS_PER_REQUEST.items():
        assert moved[name] == requests * per_request, name
    # The rest is background work: a flush pipeline (HSET last_used_at, HINCRBY,
    # EXPIRE; for the one network: ZINCRBY, ZADD, 2 ZREMRANGEBYRANK, 2 EXPIRE: 9
    # commands for one key) per interval, the revocation feed's PING each second, and
    # this test's own INFO.
    flushes = elapsed / FLUSH_EVERY + 2
    background = sum(
        calls for name, calls in moved.items() if name not in COMMANDS_PER_REQUEST
    ) - moved.get("info", 0)
    assert background <= flushes * 9 + elapsed + 2
    assert background < requests / 10  # nowhere near one per request
    wait_until(
        lambda: usage(api, user, key["id"]).json()["total_requests"] == requests + 1, timeout=5
    )


def test_the_networks_a_key_is_used_from_ride_the_flush(
    config_for: Any, spawn: Any, user: str
) -> None:
    """Clients behind a trusted proxy (this test connects from 127.0.0.2): each
    request's X-Forwarded-For address counts under its /24 or /64, busiest first."""
    config = config_for(
        server={"trusted_proxies": ["127.0.0.2"]},
        auth={"api_keys": {"last_used_flush_seconds": FLUSH_EVERY}},
    )
    process = spawn(config)
    api = Api(process.url)
    key = api.create_key(user)
    sent = {
        "203.0.113.5": 3,
        "203.0.113.77": 2,
        "::ffff:203.0.113.9": 1,  # IPv4-mapped: the same /24
        "2001:db8::1": 2,
        "2001:db8::ffff:1": 1,  # the same /64
        **{f"198.51.{i}.1": 1 for i in range(25)},  # more networks than are shown
    }
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=process.url, transport=transport, timeout=10) as proxy:
        for address, count in sent.items():
            for _ in range(count):
                headers = {"X-API-Key": key["api_key"], "X-Forwarded-For": address}
                assert proxy.get(PATH, headers=headers).status_code == 200
    total = sum(sent.values())
    wait_until(lambda: usage(api, user, key["id"]).json()["total_requests"] == total, timeout=5)
    networks = usage(api, user, key["id"]).json()["networks"]
    assert len(networks) == 20
    assert [(n["network"], n["requests"]) for n in networks[:2]] == [
        ("203.0.113.0/24", 6),
        ("2001:db8::/64", 3),
    ]
    assert all(n["requests"] == 1 and n["network"].endswith(".0/24") for n in networks[2:])
    for entry in networks:
        assert set(entry) == {"network", "requests", "last_seen"}
        seen = datetime.fromisoformat(entry["last_seen"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - seen).total_seconds()) < 300
    one_day = usage(api, user, key["id"], days=1).json()["networks"]
    assert one_day[0] == networks[0]


def test_a_request_the_key_restrictions_refuse_counts_and_shows_its_network(
    config_for: Any, spawn: Any, user: str
) -> None:
    process = spawn(config_for(auth={"api_keys": {"last_used_flush_seconds": FLUSH_EVERY}}))
    api = Api(process.url)
    created = api.http.post(
        "/api/v1/api-keys/", json={"allowed_ips": ["203.0.113.0/24"]}, headers=api.bearer(user)
    ).json()
    remember_secret(created["api_key"])
    refused = api.http.get(PATH, headers={"X-API-Key": created["api_key"]})
    assert refused.status_code == 403
    wait_until(lambda: usage(api, user, created["id"]).json()["total_requests"] == 1, timeout=5)
    [network] = usage(api, user, created["id"]).json()["networks"]
    assert (network["network"], network["requests"]) == ("127.0.0.0/24", 1)
