"""Header flood (issue 10): what unfinished request heads cost the sidecar.

Starts a redis-server, a tiny upstream and one sidecar (one worker) on loopback ports.
Then ``--flooders`` connections each push ``--mib`` MiB of one never-ending header
line, unauthenticated (reconnecting whenever the sidecar refuses and closes), while
another client sends GETs to a public path one after the other. Prints the sidecar's
RSS before, at its peak during and after the flood (sampled every 10 ms from
/proc/PID/status), how the flood was refused, and the other client's latencies. It
measures; it asserts nothing.

    .venv/bin/python -m bench.header_flood [--flooders 4] [--mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from sidecar.redisconn.embedded import find_binary

_PIECE = 64 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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


async def flood(port: int, total: int, outcome: dict[str, int]) -> None:
    """Push ``total`` bytes of unfinished header, reconnecting after each refusal."""
    sent = 0
    piece = b"a" * _PIECE
    while sent < total:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /public/x HTTP/1.1\r\nHost: flood\r\nX-Flood: ")
        try:
            while sent < total:
                writer.write(piece)
                await writer.drain()
                sent += _PIECE
                if reader.at_eof() or writer.is_closing():
                    break
        except (ConnectionError, OSError):
            pass
        try:
            answer = await asyncio.wait_for(reader.read(200), 1.0)
            kind = f"answered {answer[9:12].decode(errors='replace')}" if answer else "closed"
        except TimeoutError:
            kind = "still open (not refused)"
        except (ConnectionError, OSError):
            kind = "reset (refused; the answer was lost to unread bytes)"
        outcome[kind] = outcome.get(kind, 0) + 1
        writer.close()


async def other_client(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    request = b"GET /public/ok HTTP/1.1\r\nHost: other\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
    writer.close()


async def measure(port: int, pid: int, flooders: int, mib: int) -> None:
    peak = [rss_kib(pid)]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.01)

    before = rss_kib(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcome: dict[str, int] = {}
    baseline: list[float] = []
    quiet = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, quiet.set)
    await other_client(port, quiet, baseline)
    latencies: list[float] = []
    stop = asyncio.Event()
    client = asyncio.create_task(other_client(port, stop, latencies))
    started = time.perf_counter()
    await asyncio.gather(*(flood(port, mib * 1024 * 1024, outcome) for _ in range(flooders)))
    elapsed = time.perf_counter() - started
    stop.set()
    await client
    sampling = False
    sampler.join()
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    print(f"flood: {flooders} connections x {mib} MiB of unfinished header, {elapsed:.2f} s")
    print(f"sidecar RSS: before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
          f"(+{(peak[0] - before) / 1024:.1f} MiB), after {after / 1024:.1f} MiB")  # fmt: skip
    print(f"flood connections by answer: {dict(sorted(outcome.items()))}")
    for label, values in (("before the flood (1 s)", baseline), ("during the flood", latencies)):
        if not values:
            print(f"other client {label}: no request served")
            continue
        ms = sorted(x * 1000 for x in values)
        print(f"other client {label}: {len(ms)} requests served one after another, "
              f"median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="header-flood-") as directory:
        redis_port, upstream_port, port, admin = (free_port() for _ in range(4))
        redis = subprocess.Popen(
            [find_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--dir", directory],
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
                "jwt": {"secret": "flood-" * 8},
                "api_keys": {"hash_secret": "flood-hash-" * 4},
                "public_paths": ["/public/"],
            },
            "rate_limits": {"enabled": False},
            "logging": {"access_log": False, "level": "WARNING"},
        }
        path = Path(directory) / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(path)],
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            wait_port(port)
            asyncio.run(measure(port, sidecar.pid, args.flooders, args.mib))
        finally:
            sidecar.terminate()
            sidecar.wait(20)
            redis.terminate()
            redis.wait(10)
            upstream.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
