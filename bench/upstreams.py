"""Upstreams for the benchmark, each a foreground process on a loopback port.

``fast``: a minimal raw-asyncio HTTP/1.1 server answering every request with a small
JSON body. Only used when nginx is not installed, and labelled so in the results.

``bulk``: an ASGI app for the memory measurement. ``POST /upload`` reads and discards
the body (answering with the byte count), ``GET /download?bytes=N`` streams N zero
bytes in 1 MiB chunks. Neither ever holds a whole body.

``ws``: a WebSocket sink for the relay measurements (``websockets``, no compression,
no keep-alive pings, so an idle socket stays idle). It counts the bytes of every
binary message; a text message asks for the count so far, answered as text, and
resets it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, cast
from urllib.parse import parse_qs

BODY = b'{"status":"ok","service":"callcov-bench-upstream"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CHUNK = b"\0" * (1024 * 1024)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Fast(asyncio.Protocol):
    """Keep-alive, bodiless requests only (the throughput scenarios are all GETs)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass: no isinstance.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        count = self._buffer.count(b"\r\n\r\n")
        if count and self._transport is not None:
            self._buffer = self._buffer[self._buffer.rindex(b"\r\n\r\n") + 4 :]
            self._transport.write(RESPONSE * count)


async def serve_fast(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Fast, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def bulk_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b'{"received":%d}' % received
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    query = parse_qs(scope["query_string"].decode())
    remaining = int(query.get("bytes", ["0"])[0])
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"%d" % remaining),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    while remaining > 0:
        chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})


async def serve_ws(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def sink(connection: ServerConnection) -> None:
        received = 0
        async for message in connection:
            if isinstance(message, str):
                await connection.send(str(received))
                received = 0
            else:
                received += len(message)

    async with serve(
        sink,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        max_size=None,
        backlog=4096,
    ) as server:
        await server.serve_forever()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["fast", "bulk", "ws"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.mode in ("fast", "ws"):
        _run((serve_fast if args.mode == "fast" else serve_ws)(args.port))
        return
    import uvicorn

    uvicorn.run(
        bulk_app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
