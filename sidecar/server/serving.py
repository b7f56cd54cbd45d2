"""uvicorn plumbing shared by the single-process server (server.py) and the workers
(workers.py): the Server with the sidecar's signal handling, sockets, uvicorn settings,
the event loop, and the admin listener with its helpers."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Literal
from urllib.parse import urlsplit

import uvicorn
from redis.asyncio import Redis

from sidecar.api.admin import build_admin_app
from sidecar.auth.assertion import public_jwks
from sidecar.config.model import Config
from sidecar.keys.audit_reader import AuditReader
from sidecar.observability.logs import QUIET_UVICORN
from sidecar.proxy.upstream import UpstreamClient
from sidecar.redisconn.client import REDIS_ERRORS, Durability
from sidecar.server.protocol import HeadHook, protocol_for
from sidecar.server.read_timeouts import ReadTimeouts, timed_protocol_for

log = logging.getLogger("sidecar")

_BACKLOG = 2048


class Server(uvicorn.Server):
    """uvicorn's server with the sidecar's signal handling: SIGTERM or SIGINT starts a
    graceful shutdown (a second SIGINT forces it) and the process then exits normally.
    (uvicorn re-raises the signal after shutting down, so the exit status would be 143.)

    ``freeze_heap``: once started, move everything start-up allocated (modules, config,
    the app; ~66,000 objects) out of the cyclic garbage collector's reach. A full
    collection otherwise walks them all with the event loop stopped, about once a second
    under load: it was the sidecar's p99 (docs/design-notes.md has the figures)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        handle_signals: bool = True,
        on_started: Callable[[], None] | None = None,
        freeze_heap: bool = False,
    ) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals
        self._on_started = on_started
        self._freeze_heap = freeze_heap
        self.followers: list[Server] = []  # stop draining when this one does
        self.listening = asyncio.Event()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        for follower in self.followers:
            follower.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        if self._freeze_heap:
            gc.collect()  # start-up's own garbage first: frozen cycles are never freed
            gc.freeze()
        self.listening.set()
        if self._on_started is not None:
            self._on_started()


async def serve_helper(
    server: Server, sockets: list[socket.socket] | None = None
) -> asyncio.Task[None]:
    """Serve a helper (the admin or forward-auth listener, the example upstream) in a task
    whose uvicorn INFO lines are quiet, once it listens (or has failed to start): the
    start-up's last line is then the sidecar's own."""
    context = contextvars.copy_context()
    context.run(QUIET_UVICORN.set, True)
    task = asyncio.create_task(server.serve(sockets=sockets), context=context)
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait((task, listening), return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    return task


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port; raises OSError (port in use, bad address)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def uvicorn_config(
    app: Any,
    config: Config,
    *,
    lifespan: Literal["on", "off"] = "off",
    hardened: bool = False,
    on_head: HeadHook | None = None,
) -> uvicorn.Config:
    """``hardened`` (the public and the forward-auth listeners, which read what clients
    send): served with protocol.py's protocol (request limits, trailers, framing, a
    whole response in one write, ``on_head``), uvicorn's WebSocket handling off, as
    websocket.py relays upgrades. Every listener has the server's read timeouts
    (read_timeouts.py)."""
    timeouts = ReadTimeouts.of(config.server)
    return uvicorn.Config(
        app,
        lifespan=lifespan,
        http=protocol_for(config.server.limits, on_head, timeouts)
        if hardened
        else timed_protocol_for(timeouts),
        ws="none" if hardened else "auto",
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-* are honoured by headers.py, from server.trusted_proxies only;
        # uvicorn would otherwise trust them from any loopback peer.
        proxy_headers=False,
        backlog=_BACKLOG,
        timeout_graceful_shutdown=math.ceil(config.server.graceful_timeout_seconds),
    )


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(main)
    return uvloop.run(main)


@contextlib.asynccontextmanager
async def admin_listener(
    config: Config,
    sock: socket.socket,
    *,
    redis: Redis,
    durability: Durability,
    upstream: UpstreamClient,
    scrape: Callable[[], bytes],
    problems: Callable[[], list[str]],
    example_upstream: bool,
) -> AsyncIterator[None]:
    """Serve the admin app on ``sock`` (and the example upstream when asked) until the
    block ends; then stop them."""
    jwks = public_jwks(config.identity.assertion) if config.identity.assertion.enabled else None
    test_settings = config.upstream.for_test_keys()
    app = build_admin_app(
        redis=redis,
        durability=durability,
        upstream=upstream,
        scrape=scrape,
        problems=problems,
        jwks=jwks,
        # Only probed (connect, then close): a pool of its own is not needed.
        test_upstream=None
        if test_settings is None
        else UpstreamClient(test_settings, config.server.max_body_bytes),
        audit=AuditReader(redis, retry_after=config.redis.retry_after_seconds),
    )
    admin = Server(uvicorn_config(app, config), handle_signals=False)
    helpers = [admin]
    tasks = [await serve_helper(admin, [sock])]
    if example_upstream:
        helpers.append(example_upstream_server(config))
        tasks.append(await serve_helper(helpers[-1]))
    try:
        yield
    finally:
        for helper in helpers:
            helper.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def forward_auth_listener(
    config: Config, sock: socket.socket | None, app: Any, leader: Server
) -> AsyncIterator[None]:
    """Serve the forward-auth decisions on ``sock`` (if any) while the block runs; it
    starts draining when ``leader`` (the public server) is told to stop."""
    if sock is None:
        yield
        return
    server = Server(uvicorn_config(app, config, hardened=True), handle_signals=False)
    leader.followers.append(server)
    task = await serve_helper(server, [sock])
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


def log_listening(config: Config) -> None:
    """The start-up's last line: where the sidecar answers."""
    server, admin, decisions = config.server, config.admin, config.forward_auth
    where = [
        f"API http://{server.host}:{server.port}",
        f"admin http://{admin.host}:{admin.port} (/healthz, /readyz, /metrics)",
    ]
    if config.console.enabled:
        where.append(f"keys page http://{server.host}:{server.port}{config.console.path}")
    if decisions.enabled:
        where.append(f"forward-auth decisions http://{decisions.host}:{decisions.port}")
    log.info("listening: %s; %d worker(s)", ", ".join(where), server.workers)


def example_upstream_server(config: Config) -> Server:
    from sidecar.example.login import DemoLogin, demo_login_problem
    from sidecar.example.upstream import echo_app, verifying

    app: Any = echo_app
    assertion = config.identity.assertion
    if assertion.enabled:
        app = verifying(
            echo_app,
            jwks=public_jwks(assertion),
            issuer=assertion.issuer,
            audience=assertion.audience,
            header=assertion.header,
        )
    problem = demo_login_problem(config.example_upstream, config.auth.jwt)
    if problem is None:
        app = DemoLogin(app, config.example_upstream, config.auth.jwt)
    else:
        log.info("example upstream: no demo login (%s)", problem)
    target = urlsplit(config.upstream.url)
    settings = uvicorn.Config(
        app,
        host=target.hostname or "127.0.0.1",
        port=target.port or 80,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    return Server(settings, handle_signals=False)


async def warn_if_redis_down(redis: Redis) -> None:
    """Start anyway: JWT traffic works without Redis, API-key requests get 503 with
    Retry-After, /readyz says 503, and everything recovers when Redis is back."""
    try:
        await redis.ping()
    except REDIS_ERRORS as exc:
        reason = type(exc).__name__
        log.warning("redis unreachable at start (%s); serving, /readyz reports 503", reason)
