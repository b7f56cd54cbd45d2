"""Instructions per request of two servers that do nothing but answer: the floor under
the sidecar's full path, and what a server of our own could save.

- ``raw``: an ``asyncio.Protocol`` feeding httptools, writing a fixed response per
  request (uvloop, as the sidecar). What any Python HTTP server on this stack costs.
- ``server``: uvicorn with the sidecar's public protocol (sidecar/httpserver.py) and
  an ASGI app that answers at once with a whole response (``BODY_FOLLOWS``): the
  scope, the request/response cycle, the task per request, the two ASGI sends.

The difference between the two is the most that replacing uvicorn's protocol, cycle
and task per request with a server of our own could save; the sidecar's full path
(bench/run's "Instructions per request") less ``server`` is the sidecar's own work.
Counted as bench/instructions.py counts (callgrind, 2,000 sequential keep-alive
requests after a warm-up). Run from the repository root with the sidecar's venv:

    .venv/bin/python bench/floors.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BODY = b'{"status":"ok","service":"callcov-bench-upstream"}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
    len(BODY),
    BODY,
)
REQUESTS = 2000


class _Raw(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        import httptools

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


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    from sidecar.httpserver import BODY_FOLLOWS

    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers, BODY_FOLLOWS: 1})
    await send({"type": "http.response.body", "body": BODY})


def serve(kind: str, port: int) -> None:
    sys.path.insert(0, str(ROOT))  # this checkout's sidecar package
    import uvloop

    if kind == "raw":

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(_Raw, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())
        return
    import uvicorn

    from sidecar.config import RequestLimits
    from sidecar.httpserver import protocol_for

    config = uvicorn.Config(
        _answer,
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


def count(kind: str, work: Path) -> float:
    import instructions  # bench/ is sys.path[0]: this script's folder

    from bench import free_port, port_open, wait_for

    port = free_port()
    out = work / f"{kind}.callgrind"
    command = [*instructions.wrapper(out), sys.executable, __file__, "--serve", kind, str(port)]
    child = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(kind, lambda: port_open(port), timeout=120)
        return instructions.per_request(child.pid, out, port, "/", "unused", REQUESTS)
    finally:
        child.terminate()
        child.wait(30)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
        return 0
    import instructions

    missing = instructions.available()
    if missing is not None:
        print(f"cannot count instructions: {missing}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as work:
        for kind in ("raw", "server"):
            print(f"{kind:6} {count(kind, Path(work)):9,.0f} instructions/request", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
