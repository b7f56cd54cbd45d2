"""Real processes for tests: a redis-server, an upstream HTTP server, sidecar processes.

Nothing here is mocked: Redis is a real ``redis-server`` on a free loopback port,
the upstream a real uvicorn server, the sidecar the real ``python -m sidecar serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.redisconn.embedded import find_binary

JWT_SECRET = "test-jwt-secret-0123456789-abcdefghijklmnop"
HASH_SECRET = "test-hash-secret-0123456789-abcdefghijklmnop"
LOG_DIR_ENV = "SIDECAR_TEST_LOG_DIR"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


class RedisProcess:
    def __init__(
        self, directory: Path, *, persistent: bool = False, args: tuple[str, ...] = ()
    ) -> None:
        """``persistent``: every write is fsynced to an append-only file, so the data
        survives a kill and a restart on the same port (tests of Redis outages).
        ``args``: more redis-server options, e.g. ``("--replicaof", host, port)``."""
        self.directory = directory
        self.persistent = persistent
        self.args = args
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            find_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            *self.args,
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        wait_until(self.is_up, timeout=10)

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def is_up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.RedisError:
            return False

    def client(self) -> redis.Redis:
        # retry=None: redis-py otherwise retries a refused connection with backoff (~4 s).
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, retry=None)

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None


@contextlib.asynccontextmanager
async def serving_here(app: Any, **options: Any) -> AsyncIterator[int]:
    """uvicorn serving ``app`` on a free loopback port in this event loop (``options``
    go to ``uvicorn.Config``: a protocol class as ``http``...); yields the port."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, **options
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await serving


class ServerThread:
    """A uvicorn server on a free loopback port in a background thread."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        self.port = port or free_port()
        scheme = "https" if options.get("ssl_certfile") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
            lifespan="off", http="h11", timeout_keep_alive=30, **options,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(SystemExit):
            self.server.run()

    def start(self) -> ServerThread:
        self._thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def base_config(*, redis_url: str, upstream_url: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "upstream": {"url": upstream_url, "connect_timeout_seconds": 2, "read_timeout_seconds": 5},
        "redis": {"url": redis_url, "socket_timeout_seconds": 0.5, "retry_after_seconds": 3},
        "auth": {
            "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET, "user_id_claim": "sub"},
            "api_keys": {"max_active_per_user": 10, "hash_secret": HASH_SECRET},
            "public_paths": ["/api/v1/auth/"],
        },
        "rate_limits": {"enabled": False},
    }


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class SidecarProcess:
    """``python -m sidecar serve`` with a config file written for the test."""

    _counter = 0

    def __init__(self, config: dict[str, Any], workdir: Path, extra_args: tuple[str, ...] = ()):
        SidecarProcess._counter += 1
        self.config = config
        self.workdir = workdir
        self.name = f"sidecar-{os.getpid()}-{SidecarProcess._counter}"
        self.config_path = workdir / f"{self.name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        log_dir = Path(os.environ.get(LOG_DIR_ENV, str(workdir)))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self.url = f"http://127.0.0.1:{config['server']['port']}"
        self.admin_url = f"http://127.0.0.1:{config['admin']['port']}"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> SidecarProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        command = [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path)]
        self.process = subprocess.Popen(
            [*command, *self.extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._ready, timeout=timeout)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"sidecar exited with {self.process.returncode}: {self.logs()}")
        try:
            return httpx.get(self.admin_url + "/healthz", timeout=0.5).status_code == 200 and (
                _port_open(self.config["server"]["port"])
            )
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_sidecar(config: dict[str, Any], workdir: Path, *args: str) -> Iterator[SidecarProcess]:
    process = SidecarProcess(config, workdir, args).start()
    try:
        yield process
    finally:
        process.stop()


# Every API key and JWT the tests handled. None of them may appear in any log the
# suite produced (sidecar processes and CLI runs write theirs to $SIDECAR_TEST_LOG_DIR);
# conftest scans the logs when the session ends and fails the run on a leak.
SECRETS: set[str] = set()
# Whatever the tests recorded, anything shaped like a full key or a signed JWT is a leak too.
_SECRET_SHAPES = re.compile(
    r"sk_(?:live|test)_[A-Za-z0-9]{48}|eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
)


def remember_secret(value: str) -> str:
    SECRETS.add(value)
    return value


def leaked_secrets(directory: Path, secrets: set[str] | None = None) -> list[str]:
    """``file: what leaked`` for every recorded secret or key/JWT shape found in the logs."""
    wanted = SECRETS if secrets is None else secrets
    found: list[str] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for secret in sorted(s for s in wanted if s in text):
            found.append(f"{path}: {secret[:14]}… (a secret a test created)")
        for match in sorted(set(_SECRET_SHAPES.findall(text)) - wanted):
            found.append(f"{path}: {match[:14]}… (shaped like a full key or JWT)")
    return found


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sent on ``sock`` until it closed the connection; fails the
    test if it neither closed it nor stopped sending within ``within`` seconds."""
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    pytest.fail(f"the connection is still open after {within}s: {received!r}")


def metric(process: SidecarProcess, name: str, **labels: str) -> float:
    """One sample of the sidecar's Prometheus metrics (0 when it is not there yet)."""
    text = httpx.get(process.admin_url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
