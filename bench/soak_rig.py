"""The soak's rig: its processes (Redis nodes, Sentinel, sidecars, the upstream), each in
its own session and stopped by its own id, and a small keep-alive HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.harness import ROOT, free_port
from sidecar.redisconn.embedded import find_binary

JWT_SECRET = "soak-jwt-secret-0123456789abcdefghijklmnopqrstuv"
HASH_SECRET = "soak-hash-secret-0123456789abcdefghijklmnopqrstu"
SERVICE = "soak"
MAX_ACTIVE = 1000  # auth.api_keys.max_active_per_user (its upper bound)


class Proc:
    """A child process in its own session, stopped by its own id only."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)  # its own group: it and its workers
                self.popen.wait(5)
        self.popen = None


class RedisNode:
    def __init__(self, work: Path, name: str, replica_of: int | None = None) -> None:
        self.name = name
        self.port = free_port()
        home = work / name
        home.mkdir()
        self.conf = home / "redis.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {home}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"logfile {home / 'redis.log'}",
        ]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = Proc(name, [find_binary(), str(self.conf)], home / "stdout.log")


class Sentinel:
    def __init__(self, work: Path, master_port: int) -> None:
        self.port = free_port()
        home = work / "sentinel"
        home.mkdir()
        conf = home / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {home}\nlogfile {home / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
            # Longer than the SIGSTOP and the SIGKILL-to-restart gap: those two faults are
            # outages of one master, not failovers; the failover fault is asked for.
            f"sentinel down-after-milliseconds {SERVICE} 10000\n"
            f"sentinel failover-timeout {SERVICE} 20000\n"
        )
        self.proc = Proc("sentinel", [find_binary(), str(conf), "--sentinel"], home / "out.log")


class SidecarInstance:
    def __init__(self, work: Path, name: str, upstream_port: int, sentinel_port: int, workers: int):
        self.name = name
        self.workers = workers
        self.port = free_port()
        self.admin_port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": self.port, "graceful_timeout_seconds": 5},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "upstream": {
                "url": f"http://127.0.0.1:{upstream_port}",
                "connect_timeout_seconds": 2,
                "read_timeout_seconds": 30,
            },
            "redis": {
                "url": f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}",
                "socket_timeout_seconds": 1,
                "retry_after_seconds": 1,
            },
            "auth": {
                "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET, "user_id_claim": "sub"},
                "api_keys": {"max_active_per_user": MAX_ACTIVE, "hash_secret": HASH_SECRET},
            },
            # On, with limits no client reaches: the Redis round trip stays on every request.
            "rate_limits": {"enabled": True, "default": {"requests": 1_000_000, "per_seconds": 1}},
            "logging": {"level": "INFO", "access_log": True},
        }
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "sidecar", "serve", "--config", str(path)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        self.proc = Proc(name, argv, work / f"{name}.log")

    def worker_pids(self) -> list[int]:
        """The worker processes of a --workers supervisor (spawned interpreters)."""
        if self.workers == 1 or not self.proc.alive():
            return []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        pids = []
        for pid in children.split():
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
        return pids


class Http:
    """One keep-alive HTTP/1.1 connection, reopened after any error. Raw asyncio streams:
    the load generator shares two cores with everything it tests, so it must be cheap."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        upload: int = 0,
        timeout: float = 20.0,
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(
                self._request(method, path, headers, body, upload), timeout
            )
        except BaseException:
            self.close()
            raise

    async def _request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, upload: int
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None and self.writer is not None
        length = upload or len(body)
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        head += [f"{name}: {value}" for name, value in headers]
        if length or method in ("POST", "PUT"):
            head.append(f"Content-Length: {length}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if upload:
            block = b"\x5a" * (256 * 1024)
            sent = 0
            while sent < upload:
                piece = block[: upload - sent]
                self.writer.write(piece)
                sent += len(piece)
                await self.writer.drain()
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length_header: int | None = None
        chunked = close = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length_header = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif length_header is not None:
            data = await self.reader.readexactly(length_header)
        else:
            data = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, data


class Pool:
    def __init__(self, port: int, size: int) -> None:
        self.queue: asyncio.Queue[Http] = asyncio.Queue()
        for _ in range(size):
            self.queue.put_nowait(Http(port))

    async def request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        conn = await self.queue.get()
        try:
            return await conn.request(*args, **kwargs)
        finally:
            self.queue.put_nowait(conn)
