"""Instructions per request of servers that do less than the sidecar: the floor under
the sidecar's full path, and what a server of our own could save.

- ``raw``: an ``asyncio.Protocol`` feeding httptools, writing a fixed response per
  request (uvloop, as the sidecar). What any Python HTTP server on this stack costs.
- ``server``: uvicorn with the sidecar's public protocol (sidecar/server/protocol.py) and
  an ASGI app that answers at once with a whole response (``BODY_FOLLOWS``): the
  scope, the request/response cycle, the task per request, the two ASGI sends.
- ``full``: the sidecar as ``serve`` runs it, on the bench's full path (API key
  cached, rate limit on, access log on, nginx upstream, Redis), as bench/run counts it.
- ``app``: the same sidecar app and services under ``_Minimal``, a protocol that does
  only what this one request needs (GET, keep-alive, a whole response): no request
  limits, pipelining, flow control, request bodies, 100-continue, keep-alive timeout,
  response-head checks or Date header. ``full`` - ``app`` is a measured upper bound of
  what replacing uvicorn with a server of our own could save on the real path.

``server`` - ``raw`` bounds the same saving from below the app; ``full`` - ``server``
is the sidecar's own work. Counted as bench/instructions.py counts (callgrind, 2,000
sequential keep-alive requests after a warm-up). ``--timings`` also runs wrk against
``full`` and ``app`` (c32 and c1, 3 interleaved rounds, fresh processes). Run from the
repository root with the sidecar's venv (``--timings`` needs wrk and nginx):

    .venv/bin/python -m bench.floors [--timings]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BODY = b'{"status":"ok","service":"callcov-bench-upstream"}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)
REQUESTS = 2000
ROUNDS = 3
_NO_BODY = {"type": "http.request", "body": b"", "more_body": False}


class _Raw(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)
        self.headers = []


class _Minimal(asyncio.Protocol):
    """The least an HTTP/1.1 server must do to run an ASGI app for a GET on a keep-alive
    connection: the scope uvicorn builds, the app's head hook, a task per request, and
    the response written whole. Nothing else (see the module docstring)."""

    app: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.client = transport.get_extra_info("peername")[:2]
        self.server = transport.get_extra_info("sockname")[:2]
        self.loop = asyncio.get_running_loop()
        self.start: Any = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": self.parser.get_method().decode("ascii"),
            "root_path": "",
            "path": unquote(parsed.path.decode("ascii")),
            "raw_path": parsed.path,
            "query_string": parsed.query or b"",
            "headers": self.headers,
            "state": {},
        }
        self.app.on_head(scope)
        self.task = self.loop.create_task(self.app(scope, self._receive, self._send))

    async def _receive(self) -> Any:
        return _NO_BODY

    async def _send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        lines = [STATUS_LINE[self.start["status"]]]
        lines += [b"%b: %b\r\n" % header for header in self.start["headers"]]
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines) + message.get("body", b""))


def _answering_app() -> Any:
    """An ASGI app that answers at once with a whole response (``BODY_FOLLOWS``)."""
    from sidecar.core.types import BODY_FOLLOWS

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": headers, BODY_FOLLOWS: 1}
        )
        await send({"type": "http.response.body", "body": BODY})

    return answer


def serve(kind: str, port: int, config_path: str = "") -> None:
    import uvloop

    if kind == "raw":

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(_Raw, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())
        return
    if kind == "app":
        uvloop.run(_serve_app(config_path, port))
        return
    import uvicorn

    from sidecar.config.model import RequestLimits
    from sidecar.server.protocol import protocol_for

    config = uvicorn.Config(
        _answering_app(),
        host="127.0.0.1",
        port=port,
        http=protocol_for(RequestLimits()),
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        loop="uvloop",
    )
    uvicorn.Server(config).run()


async def _serve_app(config_path: str, port: int) -> None:
    """The sidecar app, started as ``serve`` starts it (heap frozen), under _Minimal."""
    import gc

    import yaml

    from sidecar.app.dispatch import Sidecar
    from sidecar.config.loading import parse
    from sidecar.observability import logs as logsetup

    config = parse(yaml.safe_load(Path(config_path).read_text()), os.environ)
    logsetup.configure(config.logging.level)
    app = Sidecar(config, config.redis.url)
    await app.startup()
    _Minimal.app = app
    server = await asyncio.get_running_loop().create_server(
        _Minimal, "127.0.0.1", port, backlog=2048
    )
    gc.collect()
    gc.freeze()
    await server.serve_forever()


def _serve_command(kind: str, port: int, *extra: str) -> list[str]:
    """Run from the repo root, so that `-m` puts this checkout's sidecar package first."""
    return [sys.executable, "-m", "bench.floors", "--serve", kind, str(port), *extra]


def count(kind: str, work: Path) -> float:
    from bench import instructions
    from bench.harness import free_port, port_open, wait_for

    port = free_port()
    out = work / f"{kind}.callgrind"
    command = [*instructions.wrapper(out), *_serve_command(kind, port)]
    child = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(kind, lambda: port_open(port), timeout=120)
        return instructions.per_request(child.pid, out, port, "/", "unused", REQUESTS)
    finally:
        child.terminate()
        child.wait(30)


class _FullPath:
    """Redis, the nginx upstream and a key, as bench/run sets them up; sidecars on
    them either as ``serve`` runs them (``full``) or under _Minimal (``app``)."""

    def __init__(self) -> None:
        from bench.harness import new_work_dir
        from bench.load import Load
        from bench.services import Services

        self.services = Services(new_work_dir(), ROOT)
        self.load = Load(shutil.which("wrk"), 1)
        self.redis = self.services.start_redis()
        self.upstream = self.services.start_upstream()
        first = self.start("full")
        self.key = self.services.create_key(first)[0]

    def start(self, kind: str, wrapper: tuple[str, ...] = ()) -> Any:
        """A sidecar of ``kind`` (``full`` or ``app``), answering."""
        import yaml

        from bench.harness import port_open, wait_for
        from bench.services import Sidecar, sidecar_config

        sidecar = Sidecar(kind, sidecar_config(upstream=self.upstream, redis_url=self.redis))
        if kind == "full":
            return self.services.start_sidecar(sidecar, timeout=120, wrapper=wrapper)
        path = self.services.work / f"sidecar-{kind}-{sidecar.port}.yaml"
        path.write_text(yaml.safe_dump(sidecar.config))
        sidecar.process = self.services.procs.start(
            [*wrapper, *_serve_command("app", sidecar.port, str(path))],
            self.services.work / f"sidecar-{kind}.log",
        )
        wait_for(kind, lambda: port_open(sidecar.port), timeout=120)
        return sidecar

    def instructions(self, kind: str) -> float:
        from bench import instructions

        out = self.services.work / f"{kind}.callgrind"
        sidecar = self.start(kind, tuple(instructions.wrapper(out)))
        try:
            return instructions.per_request(
                sidecar.pid, out, sidecar.port, "/api/v1/analysis/bench", self.key, REQUESTS
            )
        finally:
            self.services.procs.stop(sidecar.process, timeout=30)

    def timings(self) -> None:
        """wrk c32 then c1 against ``full`` and ``app``: fresh processes each round."""
        from bench.harness import CLK_TCK, cpu_ticks
        from bench.services import PATH

        header = [f"X-API-Key: {self.key}"]
        for connections in (32, 1):
            for round_ in range(1, ROUNDS + 1):
                for kind in ("full", "app") if round_ % 2 else ("app", "full"):
                    sidecar = self.start(kind)
                    url = sidecar.url + PATH
                    self.load.run(url, header, connections, 2)  # warm-up
                    before = cpu_ticks([sidecar.pid])
                    sample = self.load.run(url, header, connections, 10)
                    after = cpu_ticks([sidecar.pid])
                    cpu = (after[sidecar.pid] - before[sidecar.pid]) / CLK_TCK
                    print(
                        f"c{connections:<2} round {round_} {kind:4} {sample.rps:9,.0f} req/s"
                        f"  p50 {sample.p50_ms:.3f} ms  CPU {cpu / sample.requests * 1e6:6.1f}"
                        " µs/req",
                        flush=True,
                    )
                    self.services.procs.stop(sidecar.process, timeout=30)

    def close(self) -> None:
        self.services.procs.stop_all()


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.floors", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--timings", action="store_true", help="also wrk full vs app")
    options = parser.parse_args()
    from bench import instructions

    missing = instructions.available()
    if missing is not None:
        print(f"cannot count instructions: {missing}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as work:
        for kind in ("raw", "server"):
            print(f"{kind:6} {count(kind, Path(work)):9,.0f} instructions/request", flush=True)
    full_path = _FullPath()
    try:
        for kind in ("full", "app"):
            print(f"{kind:6} {full_path.instructions(kind):9,.0f} instructions/request", flush=True)
        if options.timings:
            full_path.timings()
    finally:
        full_path.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
