"""The public protocol writes a response flagged BODY_FOLLOWS (head, then its whole body)
to the socket in one piece, and still delivers it whole when the connection closes."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.config.model import RequestLimits
from sidecar.core.types import BODY_FOLLOWS
from sidecar.server.protocol import protocol_for
from tests.harness import serving_here

BODY = b'{"ok":true}'


class _Recording:
    """The real transport, with each write recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    path = scope["path"]
    headers = [(b"content-type", b"application/json")]
    if path != "/unframed":
        headers.append((b"content-length", b"%d" % len(BODY)))
    if path == "/smuggle":
        headers.append((b"x-upstream", b"a\r\nset-cookie: stolen=1"))
    if path.startswith("/byte/"):  # a value holding one byte a head may not hold
        headers.append((b"x-upstream", b"a%cstolen" % int(path.removeprefix("/byte/"))))
    flagged = path != "/unflagged"
    status = 204 if path == "/no-content" else 200
    start = {"type": "http.response.start", "status": status, "headers": headers}
    if flagged:
        start[BODY_FOLLOWS] = 1
    await send(start)
    await send({"type": "http.response.body", "body": BODY, "more_body": False})


def _exchange(request: bytes, ends: bytes = BODY) -> tuple[bytes, list[bytes]]:
    """Send ``request``; read until the response ends with ``ends`` or the connection
    closes."""
    writes: list[bytes] = []

    class Protocol(protocol_for(RequestLimits())):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Recording(transport, writes))  # type: ignore[arg-type]

    async def scenario() -> bytes:
        async with serving_here(_app, http=Protocol) as port, asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            response = b""
            while not response.endswith(ends):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                response += chunk
            writer.close()
            return response

    return asyncio.run(scenario()), writes


def test_a_flagged_response_goes_out_in_one_write() -> None:
    response, writes = _exchange(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes == [response]


def test_an_unflagged_response_is_written_as_uvicorn_does() -> None:
    response, writes = _exchange(b"GET /unflagged HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b"".join(writes) == response
    assert writes[-1] == BODY


def test_a_flagged_response_on_a_closing_connection_is_written_before_the_close() -> None:
    response, writes = _exchange(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert b"connection: close" in response.lower()
    assert writes == [response]


def test_a_flagged_response_to_http_1_0_is_written_whole() -> None:
    response, writes = _exchange(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n")
    assert response.endswith(b"\r\n\r\n" + BODY)
    assert writes == [response]


def test_a_flagged_response_without_a_length_is_chunked_in_one_write() -> None:
    response, writes = _exchange(b"GET /unframed HTTP/1.1\r\nhost: x\r\n\r\n", b"0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in response
    assert response.endswith(b"\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY))
    assert writes == [response]


def test_a_flagged_response_to_head_or_with_no_content_has_no_body() -> None:
    for request in (
        b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /no-content HTTP/1.1\r\nhost: x\r\n\r\n",
    ):
        response, writes = _exchange(request, b"\r\n\r\n")
        assert b"content-length: %d\r\n" % len(BODY) in response
        assert response.endswith(b"\r\n\r\n") and BODY not in response
        assert writes == [response]


def test_a_header_smuggling_a_line_break_is_never_written() -> None:
    response, writes = _exchange(b"GET /smuggle HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b"stolen" not in response and b"stolen" not in b"".join(writes)
    assert not response.startswith(b"HTTP/1.1 200")


def test_a_header_with_a_control_byte_is_never_written() -> None:
    for byte in (0, 1, 8, 11, 12, 27, 31, 127):
        response, writes = _exchange(b"GET /byte/%d HTTP/1.1\r\nhost: x\r\n\r\n" % byte)
        assert b"stolen" not in b"".join(writes), byte
        assert not response.startswith(b"HTTP/1.1 200"), byte
    response, _ = _exchange(b"GET /byte/128 HTTP/1.1\r\nhost: x\r\n\r\n")  # obs-text
    assert response.startswith(b"HTTP/1.1 200") and b"a\x80stolen" in response
