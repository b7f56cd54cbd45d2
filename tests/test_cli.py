"""The console entry, run for real (``python -m sidecar ...``) against the test Redis
and the shared sidecar, which sees what the operator commands do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from sidecar.cli.main import EXIT_CODES, main
from tests.conftest import Api
from tests.harness import (
    HASH_SECRET,
    JWT_SECRET,
    LOG_DIR_ENV,
    SidecarProcess,
    free_port,
    remember_secret,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; its stderr joins the logs the session-end scan checks for secrets."""
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    log = Path(os.environ[LOG_DIR_ENV]) / f"cli-{uuid.uuid4().hex}.log"
    log.write_text(result.stderr)
    return result


def ok(*args: str) -> Any:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture
def config_path(sidecar: SidecarProcess) -> str:
    return str(sidecar.config_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["serve", "--help"],
        ["check-config", "--help"],
        ["token", "--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["keys", "list", "--help"],
        ["keys", "revoke", "--help"],
        ["keys", "rotate", "--help"],
        ["keys", "usage", "--help"],
    ],
)
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: callcov-sidecar")
    assert EXIT_CODES in " ".join(out.split())


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: callcov-sidecar")


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "callcov-sidecar"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("callcov-sidecar ")


def test_check_config_prints_the_resolved_config_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text((ROOT / "config" / "docker.yaml").read_text())
    env = {
        "SIDECAR_CONFIG": str(path),
        "CALLCOV_JWT_SECRET": JWT_SECRET,
        "CALLCOV_KEY_HASH_SECRET": HASH_SECRET,
        "CALLCOV_REDIS_URL": "redis://:redis-password-1@cache:6379/0",
    }
    result = cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["auth"]["jwt"]["secret"] == "***"
    assert shown["auth"]["api_keys"]["hash_secret"] == "***"
    assert shown["redis"]["url"] == "redis://:***@cache:6379/0"
    assert shown["server"] == {
        "host": "0.0.0.0", "port": 8080, "workers": 1, "max_body_bytes": 524288000,
        "graceful_timeout_seconds": 30.0, "trusted_proxies": [],
        "limits": {
            "header_line_bytes": 8192, "header_bytes": 32768, "headers": 100, "target_bytes": 8192,
        },
        "reject_ambiguous_paths": True, "max_websockets": 1000,
        "client_header_timeout_seconds": 60.0, "client_body_timeout_seconds": 60.0,
        "keepalive_timeout_seconds": 5.0,
    }  # fmt: skip
    for secret in (JWT_SECRET, HASH_SECRET, "redis-password-1"):
        assert secret not in result.stdout + result.stderr


def test_check_config_lists_every_mistake_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "server: {port: 70000}\n"
        "upstream: {url: 'ftp://backend', read_timout_seconds: 5}\n"
        "redis: {url: 'redis://cache:6379/zero'}\n"
        "auth:\n"
        "  jwt: {secret: '${UNSET_SECRET_FOR_TEST}'}\n"
        "  api_keys: {hash_secret: '0123456789abcdef0123456789abcdef'}\n"
    )
    result = cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}: invalid configuration:\n"
        "  - auth.jwt.secret: environment variable UNSET_SECRET_FOR_TEST is not set\n"
        "  - redis.url: the database must be a number, as in redis://host:6379/0\n"
        "  - server.port: must be less than or equal to 65535\n"
        "  - upstream.read_timout_seconds: unknown key (did you mean read_timeout_seconds?)\n"
        "  - upstream.url: must be an http:// or https:// URL with a host\n"
    )


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check-config", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"{missing}: invalid configuration:\n"
        f"  - <file>: cannot read {missing}: No such file or directory\n"
    )


def test_keys_create_list_revoke_reach_the_running_sidecar(
    config_path: str, api: Api, user: str
) -> None:
    created = ok("keys", "create", "--config", config_path, "--user", user, "--description", "ops")
    key = remember_secret(created["api_key"])
    assert set(created) == {
        "id", "api_key", "key_prefix", "description", "created_at", "expires_at", "environment",
        "scopes", "allowed_ips",
    }  # fmt: skip
    assert created["description"] == "ops"
    assert created["key_prefix"] == key[:14]
    for _ in range(3):  # verified, then served from the sidecar's cache
        response = api.http.get("/a", headers={"X-API-Key": key})
        assert response.status_code == 200
        assert response.json()["headers"]["x-callcov-user-id"] == user

    listed = ok("keys", "list", "--config", config_path, "--user", user)
    assert listed["total"] == 1
    [item] = listed["api_keys"]
    assert item["id"] == created["id"] and item["is_active"] is True
    assert "api_key" not in item and key not in str(listed)
    assert listed == api.http.get("/api/v1/api-keys/", headers=api.bearer(user)).json()

    revoked = ok("keys", "revoke", "--config", config_path, created["id"])
    assert revoked == {"message": "API key expired successfully", "success": True}
    started = time.monotonic()
    wait_until(lambda: api.http.get("/a", headers={"X-API-Key": key}).status_code == 401, 1.0)
    assert time.monotonic() - started < 1.0

    assert ok("keys", "list", "--config", config_path, "--user", user)["total"] == 0
    audit = ok("keys", "list", "--config", config_path, "--user", user, "--include-expired")
    assert [k["is_active"] for k in audit["api_keys"]] == [False]
    again = ok("keys", "revoke", "--config", config_path, created["id"])  # harmless
    assert again["success"] is True


def test_keys_create_holds_the_limit(config_path: str, api: Api, user: str) -> None:
    for _ in range(10):
        api.create_key(user)
    result = cli("keys", "create", "--config", config_path, "--user", user)
    assert result.returncode == 1
    assert result.stderr == (
        "error: Maximum number of API keys (10) reached. Please expire unused keys.\n"
    )
    assert result.stdout == ""


def test_an_unknown_key_id_exits_1(config_path: str) -> None:
    result = cli("keys", "revoke", "--config", config_path, str(uuid.uuid4()))
    assert (result.returncode, result.stderr) == (1, "error: API key not found\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "revoke", "not-a-uuid"], "error: KEY_ID must be a UUID, got 'not-a-uuid'\n"),
        (["keys", "create", "--user", "has space"],
         "error: a user id is 1 to 256 printable ASCII characters, without spaces\n"),
        (["keys", "create", "--user", "u", "--description", "d" * 501],
         "error: --description is longer than 500 characters\n"),
        (["token", "--sub", ""],
         "error: a user id is 1 to 256 printable ASCII characters, without spaces\n"),
    ],
)  # fmt: skip
def test_values_the_api_would_reject_exit_2(
    config_path: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rejected before Redis is touched (run in-process: nothing crosses a process)."""
    assert main(["--config", config_path, *args]) == 2
    assert capsys.readouterr().err == message


def test_argument_errors_exit_2() -> None:
    for args in (["serve", "--workers", "0"], ["token", "--sub", "u", "--ttl", "-5"], ["keys"]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2


def test_keys_commands_without_redis_exit_1(tmp_path: Path, sidecar: SidecarProcess) -> None:
    config = yaml.safe_load(sidecar.config_path.read_text())
    port = free_port()
    config["redis"]["url"] = f"redis://:pw-not-shown@127.0.0.1:{port}/0"
    path = tmp_path / "no-redis.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("keys", "list", "--config", str(path), "--user", "u")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: Redis unreachable at redis://:***@127.0.0.1:{port}/0 (ConnectionError)\n"
    )


def test_token_mints_a_jwt_the_sidecar_accepts(config_path: str, api: Api, user: str) -> None:
    result = cli("token", "--config", config_path, "--sub", user, "--ttl", "60")
    assert result.returncode == 0, result.stderr
    token = remember_secret(result.stdout.strip())
    response = api.http.post("/api/v1/api-keys/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201
    remember_secret(response.json()["api_key"])
    listed = httpx.get(api.base + "/api/v1/api-keys/", headers={"Authorization": f"Bearer {token}"})
    assert listed.json()["total"] == 1
