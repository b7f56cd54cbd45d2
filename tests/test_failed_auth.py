"""The failed-authentication limit (SPEC Part 2, "Guessing"): per client address,
IPv6 by /64, trusted proxies honoured, decided before any Redis lookup."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sidecar.auth.failed_auth import FailedAuthLimiter
from sidecar.core.clientaddr import TrustedProxies, client_group
from sidecar.core.errors import TooManyFailedAuth
from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, base_config, merge, remember_secret

PATH = "/api/v1/analysis/"
LIMIT_BODY = {"detail": "Too many failed authentication attempts"}


# --- pure rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not-an-address", "not-an-address"),
        (None, "-"),
    ],
)
def test_clients_are_grouped_by_ipv4_address_and_ipv6_64(address: str | None, group: str) -> None:
    assert client_group(address) == group


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ((), "198.51.100.1", [b"203.0.113.9"], "198.51.100.1"),  # untrusted peer: header ignored
        (("10.0.0.0/8",), "10.0.0.2", [b"203.0.113.9"], "203.0.113.9"),
        (("10.0.0.0/8",), "10.0.0.2", [b"203.0.113.9, 10.0.0.7"], "203.0.113.9"),
        # the client may prepend anything: the right-most untrusted hop is the one to believe
        (("10.0.0.0/8",), "10.0.0.2", [b"1.2.3.4, 203.0.113.9"], "203.0.113.9"),
        (("10.0.0.0/8",), "10.0.0.2", [b"1.2.3.4", b"203.0.113.9"], "203.0.113.9"),
        (("10.0.0.0/8",), "10.0.0.2", [], "10.0.0.2"),
        (("10.0.0.0/8",), "10.0.0.2", [b"10.0.0.9, 10.0.0.8"], "10.0.0.9"),
        (("::1",), "::1", [b"2001:db8::5"], "2001:db8::5"),
    ],
)
def test_the_client_address_honours_only_trusted_proxies(
    trusted: tuple[str, ...], peer: str, forwarded: list[bytes], client: str
) -> None:
    headers = [(b"X-Forwarded-For", value) for value in forwarded]
    assert TrustedProxies(trusted).client(peer, [(b"host", b"x"), *headers]) == client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_is_refused_after_n_failures_within_the_window_and_let_back_after() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(requests=3, per_seconds=60, clock=clock)
    for _ in range(3):
        limiter.admit("203.0.113.1")
        limiter.failed("203.0.113.1")
        clock.now += 1
    with pytest.raises(TooManyFailedAuth) as refused:
        limiter.admit("203.0.113.1")
    assert refused.value.retry_after == 57  # now 1003; the first failure leaves at 1060
    limiter.admit("203.0.113.2")  # another client is not affected
    assert limiter.limited == 1
    clock.now = 1060.0
    limiter.admit("203.0.113.1")  # the oldest failure left the window
    limiter.failed("203.0.113.1")
    with pytest.raises(TooManyFailedAuth):
        limiter.admit("203.0.113.1")  # the next two are still in it


def test_the_table_of_clients_is_bounded() -> None:
    limiter = FailedAuthLimiter(requests=1, per_seconds=60, max_clients=2)
    for client in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        limiter.failed(client)
    limiter.admit("192.0.2.1")  # forgotten, the oldest
    with pytest.raises(TooManyFailedAuth):
        limiter.admit("192.0.2.3")


# --- real processes -----------------------------------------------------------------


def unknown_keys(count: int) -> list[str]:
    """Checksum-valid keys that were never issued (not secrets: nothing verifies them)."""
    return [keyformat.generate() for _ in range(count)]


def pipelined_statuses(port: int, keys: list[str], headers: bytes = b"") -> list[int]:
    """Send one GET per key over one keep-alive connection, pipelined in batches, and
    return the statuses. Cheaper on the client side than an HTTP client library, so
    the sidecar, not the test, is what the flood measures."""
    statuses: list[int] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        reader = sock.makefile("rb")
        for start in range(0, len(keys), 200):
            batch = keys[start : start + 200]
            sock.sendall(
                b"".join(
                    b"GET %s HTTP/1.1\r\nHost: t\r\nX-API-Key: %s\r\n%s\r\n"
                    % (PATH.encode(), key.encode(), headers)
                    for key in batch
                )
            )
            for _ in batch:
                statuses.append(int(reader.readline().split()[1]))
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                reader.read(length)
    return statuses


def command_calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def metric(admin_url: str, name: str) -> float:
    for line in httpx.get(admin_url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def limited_config(redis_url: str, upstream_url: str, **auth: Any) -> dict[str, Any]:
    failed = {"enabled": True, "requests": 20, "per_seconds": 3600, **auth}
    return merge(
        base_config(redis_url=redis_url, upstream_url=upstream_url),
        # Unknown keys are remembered for the whole test, however slow the machine.
        {"auth": {"failed_auth": failed, "api_keys": {"negative_cache_ttl_seconds": 3600}}},
    )


def test_a_flood_of_unknown_keys_costs_at_most_the_limit_in_redis_lookups(
    own_redis: RedisProcess, upstream: Any, spawn: Any, user: str
) -> None:
    config = limited_config(own_redis.url, upstream[1].url)
    process: SidecarProcess = spawn(config)
    api = Api(process.url)
    valid = api.create_key(user)["api_key"]
    assert httpx.get(process.url + PATH, headers={"X-API-Key": valid}).status_code == 200
    other_valid = api.create_key(user)["api_key"]  # never used before the flood: not cached
    flood = unknown_keys(10_000)
    client = own_redis.client()
    client.config_resetstat()
    assert process.process is not None
    cpu_before, started = cpu_seconds(process.process.pid), time.perf_counter()

    statuses = pipelined_statuses(config["server"]["port"], flood)

    elapsed, cpu = time.perf_counter() - started, cpu_seconds(process.process.pid) - cpu_before
    lookups = command_calls(client, "hget")
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429] * (len(flood) - 20)
    assert lookups <= 20, lookups
    print(f"\nflood: {len(flood)} unknown keys in {elapsed:.2f} s, sidecar CPU {cpu:.2f} s, "
          f"{lookups} HGETs")  # fmt: skip

    # A key the negative cache knows gets the same 429: over the limit, the answer must
    # not depend on what this instance has cached (issue 24, a canary told apart so).
    assert httpx.get(process.url + PATH, headers={"X-API-Key": flood[0]}).status_code == 429
    refused = httpx.get(process.url + PATH, headers={"X-API-Key": flood[-1]})
    assert refused.status_code == 429
    assert refused.json() == LIMIT_BODY
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    # The key this instance verified before the flood still works, from its cache...
    assert httpx.get(process.url + PATH, headers={"X-API-Key": valid}).status_code == 200
    # ...JWTs are not affected...
    jwt = {"Authorization": f"Bearer {make_token(user)}"}
    assert httpx.get(process.url + PATH, headers=jwt).status_code == 200
    # ...but a key that would need a lookup is refused before it: SPEC keeps only cached keys.
    assert httpx.get(process.url + PATH, headers={"X-API-Key": other_valid}).status_code == 429
    assert command_calls(client, "hget") == lookups
    assert metric(process.admin_url, "sidecar_failed_auth_limited_total") == len(flood) - 20 + 3
    api.http.close()


def test_ipv6_clients_behind_a_trusted_proxy_are_limited_by_64(
    own_redis: RedisProcess, upstream: Any, spawn: Any
) -> None:
    config = limited_config(own_redis.url, upstream[1].url, requests=3)
    config["server"]["trusted_proxies"] = ["127.0.0.1"]
    process = spawn(config)

    def status(forwarded: str) -> int:
        headers = {"X-API-Key": keyformat.generate(), "X-Forwarded-For": forwarded}
        return httpx.get(process.url + PATH, headers=headers).status_code

    assert [status("2001:db8:0:1::1") for _ in range(3)] == [401] * 3
    assert status("2001:db8:0:1:ffff::9") == 429  # same /64
    assert status("2001:db8:0:2::1") == 401  # the next /64
    assert status("198.51.100.4, 2001:db8:0:1::1") == 429  # a prepended hop changes nothing
    assert status("2001:db8:0:1::1, 198.51.100.4") == 401  # the proxy saw 198.51.100.4


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_dodge_the_limit(
    own_redis: RedisProcess, upstream: Any, spawn: Any
) -> None:
    process = spawn(limited_config(own_redis.url, upstream[1].url, requests=3))
    statuses = [
        httpx.get(
            process.url + PATH,
            headers={"X-API-Key": keyformat.generate(), "X-Forwarded-For": f"203.0.113.{i}"},
        ).status_code
        for i in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]


def test_the_limit_is_off_by_default(sidecar: SidecarProcess) -> None:
    statuses = pipelined_statuses(int(sidecar.url.rpartition(":")[2]), unknown_keys(30))
    assert statuses == [401] * 30


def test_a_revoked_key_counts_as_a_failure(
    own_redis: RedisProcess, upstream: Any, spawn: Any, user: str
) -> None:
    process = spawn(limited_config(own_redis.url, upstream[1].url, requests=2))
    api = Api(process.url)
    key = api.create_key(user)
    deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    revoked = {"X-API-Key": remember_secret(key["api_key"])}
    statuses = [httpx.get(process.url + PATH, headers=revoked).status_code for _ in range(2)]
    unknown = {"X-API-Key": keyformat.generate()}
    statuses.append(httpx.get(process.url + PATH, headers=unknown).status_code)
    assert statuses == [401, 401, 429]
    api.http.close()
