from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis

from tests.harness import (
    JWT_SECRET,
    LOG_DIR_ENV,
    RedisProcess,
    ServerThread,
    SidecarProcess,
    base_config,
    leaked_secrets,
    merge,
    remember_secret,
)
from tests.upstream_app import RecordingUpstream


def pytest_configure(config: pytest.Config) -> None:
    """Every sidecar process of the run logs into one directory, scanned at the end."""
    if not os.environ.get(LOG_DIR_ENV):
        os.environ[LOG_DIR_ENV] = tempfile.mkdtemp(prefix="sidecar-test-logs-")


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown: all logs are complete
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run if any key or JWT a test handled reached any log line."""
    directory = Path(os.environ[LOG_DIR_ENV])
    leaks = leaked_secrets(directory)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        lines = [f"SECRET LEAK: {len(leaks)} secret(s) found in the logs in {directory}:", *leaks]
    else:
        lines = [f"log scan: no secrets in the logs in {directory}"]
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("-", "log scan", red=bool(leaks), bold=bool(leaks))
        for line in lines:
            reporter.write_line(line, red=bool(leaks), bold=bool(leaks))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> redis.Redis:
    return redis_server.client()


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[RecordingUpstream, ServerThread]]:
    app = RecordingUpstream()
    server = ServerThread(app).start()
    yield app, server
    server.stop()


@pytest.fixture
def recorder(upstream: tuple[RecordingUpstream, ServerThread]) -> RecordingUpstream:
    upstream[0].reset()
    return upstream[0]


@pytest.fixture(scope="session")
def config_for(redis_server: RedisProcess, upstream: tuple[RecordingUpstream, ServerThread]) -> Any:
    def build(**override: Any) -> dict[str, Any]:
        return merge(
            base_config(redis_url=redis_server.url, upstream_url=upstream[1].url), override
        )

    return build


@pytest.fixture(scope="session")
def sidecar(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One shared sidecar for tests that do not change its configuration."""
    process = SidecarProcess(config_for(), tmp_path_factory.mktemp("sidecar")).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def second(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """Another sidecar process on the same Redis as the shared one ("every instance")."""
    process = SidecarProcess(config_for(), tmp_path_factory.mktemp("second")).start()
    yield process
    process.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, so INFO commandstats counts only this sidecar."""
    with RedisProcess(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def quiet_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis only one module's sidecar uses, so its commands can be counted."""
    with RedisProcess(tmp_path_factory.mktemp("quiet-redis")) as server:
        yield server


@pytest.fixture
def spawn(config_for: Any, tmp_path: Path) -> Iterator[Any]:
    """Start extra sidecars with their own config; all stopped at the end of the test."""
    started: list[SidecarProcess] = []

    def start(config: dict[str, Any] | None = None, *args: str) -> SidecarProcess:
        process = SidecarProcess(config or config_for(), tmp_path, args).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def make_token(sub: str, ttl: int = 1800, secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
    return remember_secret(jwt.encode(payload, secret, algorithm="HS256"))


@pytest.fixture
def user() -> str:
    """A fresh user id per test, so tests never share key limits."""
    return f"user-{time.monotonic_ns()}"


class Api:
    """Thin client for the sidecar under test."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30)

    def bearer(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(user)}"}

    def create_key(self, user: str, description: str | None = None) -> dict[str, Any]:
        body = {} if description is None else {"description": description}
        response = self.http.post("/api/v1/api-keys/", json=body, headers=self.bearer(user))
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        remember_secret(created["api_key"])
        return created


@pytest.fixture
def api(sidecar: SidecarProcess) -> Iterator[Api]:
    client = Api(sidecar.url)
    yield client
    client.http.close()
