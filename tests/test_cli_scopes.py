"""``keys create --scope --allow-ip``, ``keys update`` and ``keys list`` with
restrictions, run for real against the test Redis and a running sidecar that has the
scopes configured."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.harness import SidecarProcess, remember_secret
from tests.lifecycle_helpers import user_state
from tests.test_cli import cli, ok
from tests.test_scoped_keys import SCOPES


@pytest.fixture(scope="module")
def running(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config_for(auth={"scopes": SCOPES}), tmp_path_factory.mktemp("cli"))
    process.start()
    yield process
    process.stop()


def status(process: SidecarProcess, method: str, path: str, key: str) -> int:
    return httpx.request(method, process.url + path, headers={"X-API-Key": key}).status_code


def test_create_with_scopes_and_addresses_then_list_shows_them(
    running: SidecarProcess, user: str
) -> None:
    config = str(running.config_path)
    created = ok(
        "keys", "create", "--config", config, "--user", user,
        "--scope", "analysis:read", "--scope", "reports:read",
        "--allow-ip", "127.0.0.1", "--allow-ip", "2001:db8::9/64",
    )  # fmt: skip
    key = remember_secret(created["api_key"])
    assert created["scopes"] == ["analysis:read", "reports:read"]
    assert created["allowed_ips"] == ["127.0.0.1/32", "2001:db8::/64"]
    [item] = ok("keys", "list", "--config", config, "--user", user)["api_keys"]
    assert (item["scopes"], item["allowed_ips"]) == (created["scopes"], created["allowed_ips"])
    assert status(running, "GET", "/api/v1/analysis/", key) == 200
    assert status(running, "POST", "/api/v1/analysis/", key) == 403


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--scope", "admin"], "--scope: Input should be a configured scope"),
        (["--scope", "reports:read", "--scope", "reports:read"], "--scope: List should not"),
        (["--allow-ip", "10.0.0.300"], "--allow-ip: Input should be an IPv4 or IPv6"),
        (["--canary", "--scope", "reports:read"], "a --canary key has no scopes"),
    ],
)
def test_bad_restrictions_are_usage_errors_and_write_nothing(
    running: SidecarProcess,
    redis_client: redis.Redis,
    user: str,
    options: list[str],
    message: str,
) -> None:
    config = str(running.config_path)
    result = cli("keys", "create", "--config", config, "--user", user, *options)
    assert result.returncode == 2
    assert message in result.stderr
    assert user_state(redis_client, user) == {}


def test_update_narrows_and_clears_and_the_running_sidecar_follows(
    running: SidecarProcess, user: str
) -> None:
    config = str(running.config_path)
    created = ok("keys", "create", "--config", config, "--user", user, "--description", "ci")
    key = remember_secret(created["api_key"])
    assert status(running, "POST", "/api/v1/analysis/", key) == 200  # cached there now
    narrowed = ok(
        "keys", "update", "--config", config, created["id"],
        "--scope", "analysis:read", "--allow-ip", "127.0.0.0/8",
    )  # fmt: skip
    assert narrowed["scopes"] == ["analysis:read"]
    assert narrowed["allowed_ips"] == ["127.0.0.0/8"]
    assert narrowed["description"] == "ci"
    assert status(running, "POST", "/api/v1/analysis/", key) == 403  # published: at once
    cleared = ok(
        "keys", "update", "--config", config, created["id"],
        "--clear-scopes", "--clear-description",
    )  # fmt: skip
    assert cleared["scopes"] is None and cleared["description"] is None
    assert cleared["allowed_ips"] == ["127.0.0.0/8"]
    assert status(running, "POST", "/api/v1/analysis/", key) == 200


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "nothing to change"),
        (["--scope", "reports:read", "--clear-scopes"], "--scope and --clear-scopes together"),
        (["--allow-ip", "nope"], "--allow-ip: Input should be"),
    ],
)
def test_update_usage_errors(
    running: SidecarProcess, user: str, options: list[str], message: str
) -> None:
    config = str(running.config_path)
    created = ok("keys", "create", "--config", config, "--user", user)
    remember_secret(created["api_key"])
    result = cli("keys", "update", "--config", config, created["id"], *options)
    assert result.returncode == 2
    assert message in result.stderr


def test_update_of_a_revoked_or_unknown_key_fails(running: SidecarProcess, user: str) -> None:
    config = str(running.config_path)
    created = ok("keys", "create", "--config", config, "--user", user)
    remember_secret(created["api_key"])
    ok("keys", "revoke", "--config", config, created["id"])
    revoked = cli("keys", "update", "--config", config, created["id"], "--description", "x")
    assert (revoked.returncode, revoked.stderr) == (1, "error: API key is not active\n")
    unknown = cli(
        "keys",
        "update",
        "--config",
        config,
        "8a1e5c2e-4b7f-4f7e-9a57-1a2b3c4d5e6f",
        "--clear-scopes",
    )
    assert (unknown.returncode, unknown.stderr) == (1, "error: API key not found\n")
