"""Run the sidecar: bind the listeners, start the embedded Redis when configured, serve,
and shut down gracefully on SIGTERM/SIGINT.

One worker (the default): the public and the admin listener share one event loop in
this process. ``server.workers`` > 1: see workers.py.

Shutdown order: stop accepting; let in-flight requests finish (up to
``server.graceful_timeout_seconds``, then they are cancelled); close the Redis and
upstream pools; stop the admin listener; stop the embedded Redis; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Literal
from urllib.parse import urlsplit

import uvicorn
from prometheus_client import generate_latest
from redis.asyncio import Redis

from sidecar import accesslog
from sidecar.admin import build_admin_app
from sidecar.app import Sidecar
from sidecar.config import Config
from sidecar.embedded import EmbeddedRedis, EmbeddedRedisError
from sidecar.store import REDIS_ERRORS

log = logging.getLogger("sidecar")

EXIT_OK, EXIT_FAILURE = 0, 1
_BACKLOG = 2048


class Server(uvicorn.Server):
    """uvicorn's server with the sidecar's signal handling: SIGTERM or SIGINT starts a
    graceful shutdown (a second SIGINT forces it) and the process then exits normally.
    (uvicorn re-raises the signal after shutting down, so the exit status would be 143.)"""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        handle_signals: bool = True,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals
        self._on_started = on_started

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
        if self.started and self._on_started is not None:
            self._on_started()


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
    app: Any, config: Config, *, lifespan: Literal["on", "off"] = "off"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan=lifespan,
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-* are honoured by headers.py, from server.trusted_proxies only;
        # uvicorn would otherwise trust them from any loopback peer.
        proxy_headers=False,
        backlog=_BACKLOG,
        timeout_graceful_shutdown=math.ceil(config.server.graceful_timeout_seconds),
    )


def resolve_redis_url(config: Config, *, share: bool = False) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded server when configured."""
    if config.redis.url != "embedded":
        return config.redis.url, None
    embedded = EmbeddedRedis(config.redis.embedded_dir)
    embedded.start(share=share)
    return embedded.url, embedded


def run(config: Config, *, example_upstream: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status."""
    accesslog.configure(config.logging.level)
    workers = config.server.workers
    try:
        admin_sock = _bind_or_explain(config.admin.host, config.admin.port, "admin")
        # Several workers each bind the public port with SO_REUSEPORT; reserving it here
        # (bound, not listening, so it takes no connections) reports a port in use at once.
        public_sock = _bind_or_explain(
            config.server.host, config.server.port, "public", reuse_port=workers > 1
        )
    except _StartFailed:
        return EXIT_FAILURE
    try:
        url, embedded = resolve_redis_url(config)
    except EmbeddedRedisError as exc:
        log.error("cannot start the embedded Redis: %s", exc)
        return EXIT_FAILURE
    try:
        if workers > 1:
            from sidecar.workers import supervise

            return supervise(config, url, admin_sock, example_upstream=example_upstream)
        return run_loop(_serve(config, url, public_sock, admin_sock, example_upstream))
    finally:
        public_sock.close()
        admin_sock.close()
        if embedded is not None:
            embedded.stop()
        log.info("stopped")


class _StartFailed(Exception):
    pass


def _bind_or_explain(
    host: str, port: int, which: str, *, reuse_port: bool = False
) -> socket.socket:
    try:
        return bind(host, port, reuse_port=reuse_port, listen=not reuse_port)
    except OSError as exc:
        key = "server" if which == "public" else "admin"
        log.error(
            "cannot listen on %s:%d for the %s listener (%s.host/%s.port): %s",
            host, port, which, key, key, exc.strerror or exc,
        )  # fmt: skip
        raise _StartFailed() from exc


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(
    config: Config,
    redis_url: str,
    public_sock: socket.socket,
    admin_sock: socket.socket,
    example_upstream: bool,
) -> int:
    sidecar = Sidecar(config, redis_url)
    public = Server(uvicorn_config(sidecar, config, lifespan="on"))

    def scrape() -> bytes:
        sidecar.metrics.sync()
        return generate_latest(sidecar.metrics.registry)

    def draining() -> list[str]:
        return ["shutting down"] if public.should_exit else []

    admin_app = build_admin_app(
        redis=sidecar.redis, upstream=sidecar.upstream, scrape=scrape, problems=draining
    )
    helpers = [Server(uvicorn_config(admin_app, config), handle_signals=False)]
    if example_upstream:
        helpers.append(example_upstream_server(config))
    await warn_if_redis_down(sidecar.redis)
    helper_tasks = [asyncio.create_task(helpers[0].serve(sockets=[admin_sock]))]
    helper_tasks += [asyncio.create_task(h.serve()) for h in helpers[1:]]
    log_listening(config)
    try:
        await public.serve(sockets=[public_sock])
    except SystemExit:  # uvicorn's way to report a failed lifespan start-up
        log.error("start-up failed; see the error above")
        return EXIT_FAILURE
    finally:
        for helper in helpers:
            helper.should_exit = True
        await asyncio.gather(*helper_tasks, return_exceptions=True)
    return EXIT_OK if public.started else EXIT_FAILURE


def log_listening(config: Config) -> None:
    server, admin = config.server, config.admin
    log.info(
        "listening: public http://%s:%d, admin http://%s:%d, %d worker(s)",
        server.host, server.port, admin.host, admin.port, server.workers,
    )  # fmt: skip


def example_upstream_server(config: Config) -> Server:
    from sidecar.example_upstream import echo_app

    target = urlsplit(config.upstream.url)
    settings = uvicorn.Config(
        echo_app,
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
