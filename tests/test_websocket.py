"""WebSocket and SSE pass-through (SPEC Part 2), with the ``websockets`` library on both
ends: a real echo server upstream, a real client through a real sidecar process."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Api, make_token
from tests.harness import ServerThread, SidecarProcess, base_config, free_port, merge


class EchoUpstream:
    """A websockets echo server in its own thread; records each handshake's headers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.handshakes: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()

        def record(connection: ServerConnection, request: Request) -> Response | None:
            self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})
            if request.path == "/ws/forbidden":
                return connection.respond(403, "not for you\n")
            return None

        async def echo(connection: ServerConnection) -> None:
            async for message in connection:
                if message == "close with 4000":
                    await connection.close(4000, "asked to")
                    return
                await connection.send(message)

        async with serve(echo, "127.0.0.1", self.port, process_request=record, max_size=None):
            self._ready.set()
            await self._stop

    def start(self) -> EchoUpstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        def finish() -> None:
            if self._stop is not None and not self._stop.done():
                self._stop.set_result(None)

        self._loop.call_soon_threadsafe(finish)
        self._thread.join(10)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    server = EchoUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(
    redis_server: Any, echo: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """One sidecar in front of the echo server for the tests with the default config."""
    config = base_config(redis_url=redis_server.url, upstream_url=echo.url)
    process = SidecarProcess(config, tmp_path_factory.mktemp("websocket")).start()
    yield process
    process.stop()


@pytest.fixture
def ws_sidecar(spawn: Any, redis_server: Any, echo: EchoUpstream, shared: SidecarProcess) -> Any:
    def start(**override: Any) -> SidecarProcess:
        if not override:
            return shared
        config = merge(base_config(redis_url=redis_server.url, upstream_url=echo.url), override)
        return spawn(config)  # type: ignore[no-any-return]

    return start


def ws_url(sidecar: SidecarProcess, path: str = "/ws/echo") -> str:
    return sidecar.url.replace("http://", "ws://") + path


def open_socket(sidecar: SidecarProcess, headers: dict[str, str]) -> ClientConnection:
    return connect(ws_url(sidecar), additional_headers=headers, max_size=None, open_timeout=10)


def closed_code(socket: ClientConnection) -> tuple[int | None, float]:
    """Wait (at most 10 s) for the sidecar to close the socket: its close code, and
    how long it took. The deadline only stops a broken test; the time is reported."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=10)
    received = closed.value.rcvd
    return (received.code if received else None), time.monotonic() - started


def test_echo_through_the_sidecar_with_identity_headers(
    ws_sidecar: Any, echo: EchoUpstream, user: str
) -> None:
    sidecar = ws_sidecar()
    api = Api(sidecar.url)
    key = api.create_key(user)
    with open_socket(sidecar, {"X-API-Key": key["api_key"]}) as socket:
        socket.send("hello")
        assert socket.recv(timeout=10) == "hello"
        big = bytes(range(256)) * 8192  # 2 MiB, many TCP reads each way
        socket.send(big)
        assert socket.recv(timeout=30) == big
    seen = echo.handshakes[-1]
    assert seen["x-callcov-user-id"] == user
    assert seen["x-callcov-auth-method"] == "api_key"
    assert seen["x-callcov-key-id"] == key["id"]
    assert "x-api-key" not in seen


def test_close_codes_and_refusals_of_the_upstream_pass_through(ws_sidecar: Any, user: str) -> None:
    sidecar = ws_sidecar()
    headers = {"Authorization": f"Bearer {make_token(user)}"}
    with open_socket(sidecar, headers) as socket:
        socket.send("close with 4000")
        code, _ = closed_code(socket)
        assert code == 4000
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(sidecar, "/ws/forbidden"), additional_headers=headers, open_timeout=10)
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"not for you\n"


def test_without_a_credential_the_handshake_gets_401_and_nothing_reaches_the_upstream(
    ws_sidecar: Any, echo: EchoUpstream
) -> None:
    sidecar = ws_sidecar()
    before = len(echo.handshakes)
    with pytest.raises(InvalidStatus) as refused:
        open_socket(sidecar, {})
    assert refused.value.response.status_code == 401
    assert b"Could not validate credentials" in refused.value.response.body
    assert len(echo.handshakes) == before


def test_revoking_the_key_closes_its_socket_with_1008(
    ws_sidecar: Any, user: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecar = ws_sidecar()
    api = Api(sidecar.url)
    key = api.create_key(user)
    other = api.create_key(user)
    with (
        open_socket(sidecar, {"X-API-Key": key["api_key"]}) as socket,
        open_socket(sidecar, {"X-API-Key": other["api_key"]}) as bystander,
    ):
        socket.send("ping")
        assert socket.recv(timeout=10) == "ping"
        deleted = api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
        assert deleted.status_code == 200
        code, seconds = closed_code(socket)
        assert code == 1008
        with capsys.disabled():
            print(f"\nrevoked key's WebSocket closed {seconds * 1000:.0f} ms after the DELETE")
        bystander.send("still here")  # another key's socket is untouched
        assert bystander.recv(timeout=10) == "still here"


def test_a_key_revoked_through_another_instance_closes_the_socket(
    ws_sidecar: Any, user: str
) -> None:
    here = ws_sidecar()
    elsewhere = ws_sidecar(logging={"level": "INFO"})  # a second instance, same Redis
    key = Api(here.url).create_key(user)
    with open_socket(here, {"X-API-Key": key["api_key"]}) as socket:
        socket.send("ping")
        assert socket.recv(timeout=10) == "ping"
        there = Api(elsewhere.url)
        deleted = there.http.delete(f"/api/v1/api-keys/{key['id']}", headers=there.bearer(user))
        assert deleted.status_code == 200
        code, _ = closed_code(socket)
        assert code == 1008  # via the revocation feed


def test_a_rotated_key_socket_stays_through_the_grace_and_closes_when_it_ends(
    ws_sidecar: Any, user: str
) -> None:
    """The key's expiry path: rotation gives the old key an ``expires_at`` (the grace)."""
    sidecar = ws_sidecar()
    api = Api(sidecar.url)
    key = api.create_key(user)
    with open_socket(sidecar, {"X-API-Key": key["api_key"]}) as socket:
        rotated = api.http.post(
            f"/api/v1/api-keys/{key['id']}/rotate",
            json={"grace_period_seconds": 2},
            headers=api.bearer(user),
        )
        assert rotated.status_code == 201, rotated.text
        socket.send("still valid in the grace")
        assert socket.recv(timeout=10) == "still valid in the grace"
        code, _ = closed_code(socket)
        assert code == 1008


def test_a_graceful_shutdown_closes_open_sockets_with_1001_without_waiting_for_them(
    ws_sidecar: Any, user: str
) -> None:
    sidecar = ws_sidecar(server={"graceful_timeout_seconds": 60})
    with open_socket(sidecar, {"Authorization": f"Bearer {make_token(user)}"}) as socket:
        socket.send("ping")
        assert socket.recv(timeout=10) == "ping"
        sidecar.signal(signal.SIGTERM)
        code, _ = closed_code(socket)
        assert code == 1001
    assert sidecar.process is not None
    # Well before the 60 s grace: the open socket did not hold the shutdown up.
    assert sidecar.process.wait(30) == 0


def test_a_jwt_socket_closes_with_1008_when_the_token_expires(ws_sidecar: Any, user: str) -> None:
    sidecar = ws_sidecar()
    token = make_token(user, ttl=2)
    with open_socket(sidecar, {"Authorization": f"Bearer {token}"}) as socket:
        socket.send("ping")
        assert socket.recv(timeout=10) == "ping"
        code, _ = closed_code(socket)
        assert code == 1008


def test_open_sockets_are_bounded_by_max_websockets(ws_sidecar: Any, user: str) -> None:
    sidecar = ws_sidecar(server={"max_websockets": 1})
    token = make_token(user)
    headers = {"Authorization": f"Bearer {token}"}
    with open_socket(sidecar, headers) as first:
        with pytest.raises(InvalidStatus) as refused:
            open_socket(sidecar, headers)
        assert refused.value.response.status_code == 503
        first.send("ok")
        assert first.recv(timeout=10) == "ok"
    # The slot is free again once the first socket is gone.
    deadline = time.monotonic() + 10
    while True:
        try:
            with open_socket(sidecar, headers) as again:
                again.send("x")
                assert again.recv(timeout=10) == "x"
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the slot was never released"


def test_the_rate_limit_is_charged_once_per_socket(ws_sidecar: Any, user: str) -> None:
    sidecar = ws_sidecar(
        rate_limits={"enabled": True, "default": {"requests": 2, "per_seconds": 3600}}
    )
    headers = {"Authorization": f"Bearer {make_token(user)}"}
    with open_socket(sidecar, headers) as socket:
        for i in range(20):
            socket.send(f"m{i}")
            assert socket.recv(timeout=10) == f"m{i}"
    with httpx.Client(base_url=sidecar.url, headers=headers, timeout=10) as client:
        assert client.get("/x").status_code != 429  # the second of two
        assert client.get("/x").status_code == 429


class _Events:
    """An SSE upstream: the second event is produced only once the test saw the first."""

    def __init__(self) -> None:
        self.first_seen = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await asyncio.get_running_loop().run_in_executor(None, self.first_seen.wait, 30)
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": False})


def test_server_sent_events_reach_the_client_as_they_are_produced(
    spawn: Any, redis_server: Any, user: str
) -> None:
    events = _Events()
    upstream = ServerThread(events).start()
    try:
        sidecar = spawn(
            merge(base_config(redis_url=redis_server.url, upstream_url=upstream.url), {})
        )
        headers = {"Authorization": f"Bearer {make_token(user)}"}
        # The read timeout turns a buffering proxy into a failure instead of a hang.
        with (
            httpx.Client(base_url=sidecar.url, headers=headers, timeout=10) as client,
            client.stream("GET", "/events") as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            chunks = response.iter_raw()
            received = b""
            while b"data: one\n\n" not in received:
                received += next(chunks)
            assert b"two" not in received  # not produced yet
            events.first_seen.set()
            received += b"".join(chunks)
        assert received == b"data: one\n\ndata: two\n\n"
    finally:
        events.first_seen.set()
        upstream.stop()
