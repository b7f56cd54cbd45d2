"""The processes the attack benches (slowloris.py, scanning_flood.py) run against: a
redis-server, a tiny upstream answering 200 to everything, and one sidecar (one worker)
on loopback ports, with the fd limit raised for all of them; and what the sidecar
process holds (/proc/PID/status, /proc/PID/fd)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bench.harness import free_port
from sidecar.redisconn.embedded import find_binary


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        # One write: a head and body in two segments would meet Nagle and delayed ACKs.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def log_message(self, *args: object) -> None:
        pass


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Rig:
    port: int
    pid: int
    directory: Path
    redis_port: int = 0
    redis_pid: int = 0

    def status(self, field: str) -> int:
        """A /proc/PID/status size in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one, for this process and the ones it starts."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def running(override: dict[str, Any], *, prefix: str, source: str | None = None) -> Iterator[Rig]:
    """``source``: run the sidecar of that checkout (default: this one)."""
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        directory = Path(name)
        redis_port, upstream_port, port, admin = (free_port() for _ in range(4))
        redis = subprocess.Popen(
            [find_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--dir", name],
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        upstream = ThreadingHTTPServer(("127.0.0.1", upstream_port), _Ok)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin},
            "upstream": {"url": f"http://127.0.0.1:{upstream_port}"},
            "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
            "auth": {
                "jwt": {"secret": "attack-" * 8},
                "api_keys": {"hash_secret": "attack-hash-" * 4},
                "public_paths": ["/public/"],
            },
            "rate_limits": {"enabled": False},
            "logging": {"access_log": False, "level": "WARNING"},
        }
        path = directory / "sidecar.yaml"
        path.write_text(yaml.safe_dump(merge(config, override)))
        code = {"PYTHONPATH": source} if source else {}
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(path)],
            stdin=subprocess.DEVNULL, cwd=source,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **code},
        )  # fmt: skip
        try:
            wait_port(port)
            wait_port(admin)
            yield Rig(port, sidecar.pid, directory, redis_port, redis.pid)
        finally:
            sidecar.terminate()
            sidecar.wait(30)
            redis.terminate()
            redis.wait(10)
            upstream.shutdown()
