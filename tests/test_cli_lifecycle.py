"""``keys create --expires-at --environment``, ``keys rotate``, ``keys usage``, run for
real against the test Redis and the shared sidecar."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.cli.main import main
from tests.conftest import Api
from tests.harness import SidecarProcess, remember_secret, wait_until
from tests.lifecycle_helpers import status, user_state
from tests.test_cli import cli, ok

PROPAGATION_DEADLINE = 1.0


@pytest.fixture
def config_path(sidecar: SidecarProcess) -> str:
    return str(sidecar.config_path)


def test_create_with_expiry_and_environment_and_list_shows_them(
    config_path: str, api: Api, user: str
) -> None:
    moment = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    created = ok(
        "keys", "create", "--config", config_path, "--user", user,
        "--expires-at", moment.isoformat(), "--environment", "test",
    )  # fmt: skip
    key = remember_secret(created["api_key"])
    assert key.startswith("sk_test_") and created["environment"] == "test"
    assert created["expires_at"] == moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert status(api.base, key) == 200
    [item] = ok("keys", "list", "--config", config_path, "--user", user)["api_keys"]
    assert (item["environment"], item["expires_at"]) == ("test", created["expires_at"])


def test_rotate_prints_the_new_key_and_the_old_one_stops_after_its_grace(
    config_path: str, api: Api, user: str
) -> None:
    old = api.create_key(user, "cron")
    assert status(api.base, old["api_key"]) == 200  # cached by the running sidecar
    new = ok("keys", "rotate", "--config", config_path, old["id"], "--grace-period", "0")
    remember_secret(new["api_key"])
    assert new["rotated_from"] == old["id"] and new["description"] == "cron"
    started = time.monotonic()
    wait_until(lambda: status(api.base, old["api_key"]) == 401, PROPAGATION_DEADLINE)
    assert time.monotonic() - started < PROPAGATION_DEADLINE
    assert status(api.base, new["api_key"]) == 200
    again = cli("keys", "rotate", "--config", config_path, old["id"])
    assert (again.returncode, again.stderr) == (1, "error: API key is not active\n")


def test_rotate_keeps_the_old_key_for_the_default_grace(
    config_path: str, api: Api, user: str
) -> None:
    old = api.create_key(user)
    new = ok("keys", "rotate", "--config", config_path, old["id"])
    remember_secret(new["api_key"])
    assert status(api.base, old["api_key"]) == 200
    again = cli("keys", "rotate", "--config", config_path, old["id"])
    assert (again.returncode, again.stderr) == (1, "error: API key has already been rotated\n")


def test_usage_shows_the_days_up_to_today(config_path: str, api: Api, user: str) -> None:
    key = api.create_key(user)
    shown = ok("keys", "usage", "--config", config_path, key["id"], "--days", "3")
    assert shown["id"] == key["id"] and shown["key_prefix"] == key["key_prefix"]
    today = datetime.now(UTC).date()
    assert [d["date"] for d in shown["days"]] == [
        (today - timedelta(days=back)).isoformat() for back in (2, 1, 0)
    ]
    assert len(ok("keys", "usage", "--config", config_path, key["id"])["days"]) == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--user", "u", "--expires-at", "2020-01-01T00:00:00Z"],
         "error: --expires-at: Value error, must be at least 60 seconds in the future\n"),
        (["keys", "create", "--user", "u", "--expires-at", "2030-01-01T00:00:00"],
         "error: --expires-at: Input should have timezone info\n"),
        (["keys", "create", "--user", "u", "--expires-at", "soon"],
         "error: --expires-at: Input should be an ISO 8601 date-time with a time zone\n"),
        (["keys", "create", "--user", "u", "--environment", "prod"],
         "error: --environment: Input should be 'live' or 'test'\n"),
        (["keys", "rotate", "not-a-uuid"], "error: KEY_ID must be a UUID, got 'not-a-uuid'\n"),
        (["keys", "rotate", "8a1e5c2e-4b7f-4f7e-9a57-1a2b3c4d5e6f", "--grace-period", "-1"],
         "error: --grace-period: Input should be greater than or equal to 0\n"),
        (["keys", "rotate", "8a1e5c2e-4b7f-4f7e-9a57-1a2b3c4d5e6f", "--grace-period", "1d"],
         "error: --grace-period: not a whole number: '1d'\n"),
        (["keys", "usage", "8a1e5c2e-4b7f-4f7e-9a57-1a2b3c4d5e6f", "--days", "91"],
         "error: --days: Input should be less than or equal to 90\n"),
    ],
)  # fmt: skip
def test_values_the_api_would_reject_exit_2(
    config_path: str,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    redis_client: object,
) -> None:
    """Rejected before Redis is touched (run in-process: nothing crosses a process)."""
    before = user_state(redis_client, "u")  # type: ignore[arg-type]
    assert main(["--config", config_path, *args]) == 2
    assert capsys.readouterr().err == message
    assert user_state(redis_client, "u") == before  # type: ignore[arg-type]


def test_unknown_ids_exit_1(config_path: str) -> None:
    for action in ("rotate", "usage"):
        result = cli(
            "keys", action, "--config", config_path, "8a1e5c2e-4b7f-4f7e-9a57-1a2b3c4d5e6f"
        )
        assert (result.returncode, result.stderr) == (1, "error: API key not found\n")
