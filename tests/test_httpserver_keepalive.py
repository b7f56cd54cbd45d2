"""The public protocol's keep-alive timeout (one lazy timer per idle period instead of
uvicorn's timer per response): an idle connection closes ``timeout_keep_alive`` after
its last response, never while a request is being answered."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sidecar.config.model import RequestLimits
from sidecar.server.protocol import protocol_for
from tests.harness import serving_here

TIMEOUT = 1.0
BODY = b"ok"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/slow":
        await asyncio.sleep(TIMEOUT * 1.5)  # outlasts the timer armed by the first response
    headers = [(b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
    response = b""
    while not response.endswith(b"\r\n\r\n" + BODY):
        chunk = await reader.read(65536)
        assert chunk, f"closed before the response to {path}: {response!r}"
        response += chunk
    return response


def _serve(client: Any) -> Any:
    async def scenario() -> Any:
        protocol = protocol_for(RequestLimits())
        async with (
            serving_here(_app, http=protocol, timeout_keep_alive=TIMEOUT) as port,
            asyncio.timeout(20),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await client(reader, writer)
            finally:
                writer.close()

    return asyncio.run(scenario())


def test_an_idle_connection_closes_a_timeout_after_its_last_response() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        await _get(reader, writer, "/first")
        await asyncio.sleep(TIMEOUT * 0.6)  # the first response's timer is still pending
        await _get(reader, writer, "/second")
        answered = time.monotonic()
        assert await reader.read(65536) == b""  # the server closes it
        return time.monotonic() - answered

    idle = _serve(client)
    assert TIMEOUT * 0.9 <= idle < TIMEOUT * 1.9


def test_a_request_outlasting_the_timeout_is_answered_and_then_timed() -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        await _get(reader, writer, "/first")
        response = await _get(reader, writer, "/slow")
        assert response.startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        assert await reader.read(65536) == b""
        return time.monotonic() - answered

    idle = _serve(client)
    assert TIMEOUT * 0.9 <= idle < TIMEOUT * 1.9
