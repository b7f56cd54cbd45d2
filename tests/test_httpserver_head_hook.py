"""The public protocol's head hook: called with a request's scope once its head is
parsed, before the app runs for it (app.py starts the rate-limit check there)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.config.model import RequestLimits
from sidecar.server.protocol import protocol_for
from tests.harness import serving_here

Events = list[tuple[str, str]]


def _serve(request: bytes, responses: int, hook: Callable[[Any], None]) -> tuple[bytes, Events]:
    """Send ``request`` (one write) and read ``responses`` answers; the app answers each
    with the marker the hook left in its scope. Returns what came back and the order
    in which hook and app saw each path."""
    events: Events = []

    def recording_hook(scope: Any) -> None:
        events.append(("hook", scope["path"]))
        hook(scope)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        events.append(("app", scope["path"]))
        body = scope.get("test.marker", b"none")
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> bytes:
        protocol = protocol_for(RequestLimits(), recording_hook)
        async with serving_here(app, http=protocol) as port, asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            received = b""
            while received.count(b"HTTP/1.1 200") < responses or not received.endswith(
                (b"marked", b"none")
            ):
                chunk = await reader.read(65536)
                assert chunk, received
                received += chunk
            writer.close()
            return received

    return asyncio.run(scenario()), events


def _mark(scope: Any) -> None:
    scope["test.marker"] = b"marked"


def test_the_hook_sees_the_scope_before_the_app_and_the_app_sees_its_work() -> None:
    received, events = _serve(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", 1, _mark)
    assert events == [("hook", "/a"), ("app", "/a")]
    assert received.endswith(b"\r\n\r\nmarked")


def test_a_pipelined_request_waiting_its_turn_is_not_hooked() -> None:
    # The second head is parsed while the first is answered: its app starts only later,
    # so whatever the hook started could go unused if the connection dropped meanwhile.
    pipelined = b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\n\r\n"
    received, events = _serve(pipelined, 2, _mark)
    assert events == [("hook", "/first"), ("app", "/first"), ("app", "/second")]
    assert received.endswith(b"\r\n\r\nnone")  # the second was answered, unhooked


def test_a_failing_hook_is_logged_and_the_request_still_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(scope: Any) -> None:
        raise RuntimeError("hook bug")

    with caplog.at_level(logging.ERROR, logger="sidecar"):
        received, events = _serve(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", 1, broken)
    assert events == [("hook", "/a"), ("app", "/a")]
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"none")
    assert "request head hook failed" in caplog.text
