"""Run the sidecar: bind the listeners, start the embedded Redis when configured, serve,
and shut down gracefully on SIGTERM/SIGINT.

One worker (the default): the public and the admin listener share one event loop in
this process. ``server.workers`` > 1: see workers.py.

Shutdown order: stop accepting; let in-flight requests finish (up to
``server.graceful_timeout_seconds``, then they are cancelled); close the Redis and
upstream pools; stop the admin listener; stop the embedded Redis; exit 0.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from prometheus_client import generate_latest

from sidecar.app.dispatch import Sidecar
from sidecar.config.model import Config
from sidecar.core.errors import EXIT_FAILURE, EXIT_OK
from sidecar.observability import logs as logsetup
from sidecar.redisconn.embedded import EmbeddedRedis, EmbeddedRedisError
from sidecar.server.compat import untested_uvicorn
from sidecar.server.serving import (
    Server,
    admin_listener,
    bind,
    forward_auth_listener,
    log_listening,
    run_loop,
    uvicorn_config,
    warn_if_redis_down,
)
from sidecar.server.supervisor import supervise

log = logging.getLogger("sidecar")


def resolve_redis_url(config: Config, *, share: bool = False) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded server when configured."""
    if config.redis.url != "embedded":
        return config.redis.url, None
    embedded = EmbeddedRedis(config.redis.embedded_dir)
    embedded.start(share=share)
    return embedded.url, embedded


def run(config: Config, *, example_upstream: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status."""
    logsetup.configure(config.logging.level)
    refused = untested_uvicorn(uvicorn.__version__)
    if refused is not None:
        log.error("%s", refused)
        return EXIT_FAILURE
    workers = config.server.workers
    try:
        admin_sock = _bind_or_explain(config.admin.host, config.admin.port, "admin")
        # Several workers each bind the public port with SO_REUSEPORT; reserving it here
        # (bound, not listening, so it takes no connections) reports a port in use at once.
        public_sock = _bind_or_explain(
            config.server.host, config.server.port, "public", reuse_port=workers > 1
        )
        decisions = config.forward_auth
        decisions_sock = (
            _bind_or_explain(decisions.host, decisions.port, "forward-auth", reuse_port=workers > 1)
            if decisions.enabled
            else None
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
            return supervise(config, url, admin_sock, example_upstream=example_upstream)
        return run_loop(
            _serve(config, url, public_sock, admin_sock, decisions_sock, example_upstream)
        )
    finally:
        public_sock.close()
        if decisions_sock is not None:
            decisions_sock.close()
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
        key = {"public": "server", "forward-auth": "forward_auth"}.get(which, which)
        log.error(
            "cannot listen on %s:%d for the %s listener (%s.host/%s.port): %s",
            host, port, which, key, key, exc.strerror or exc,
        )  # fmt: skip
        raise _StartFailed() from exc


async def _serve(
    config: Config,
    redis_url: str,
    public_sock: socket.socket,
    admin_sock: socket.socket,
    decisions_sock: socket.socket | None,
    example_upstream: bool,
) -> int:
    sidecar = Sidecar(config, redis_url)
    public = Server(
        uvicorn_config(sidecar, config, lifespan="on", hardened=True, on_head=sidecar.on_head),
        on_started=lambda: log_listening(config),  # last: after the helpers and start-up
        freeze_heap=True,
    )

    def scrape() -> bytes:
        sidecar.metrics.sync()
        return generate_latest(sidecar.metrics.registry)

    def draining() -> list[str]:
        return ["shutting down"] if public.should_exit else []

    await warn_if_redis_down(sidecar.redis)
    async with (
        admin_listener(
            config,
            admin_sock,
            redis=sidecar.redis,
            durability=sidecar.durability,
            upstream=sidecar.upstream,
            scrape=scrape,
            problems=draining,
            example_upstream=example_upstream,
        ),
        forward_auth_listener(config, decisions_sock, sidecar.forward_auth, public),
    ):
        try:
            await public.serve(sockets=[public_sock])
        except SystemExit:  # uvicorn's way to report a failed lifespan start-up
            log.error("start-up failed; see the error above")
            return EXIT_FAILURE
    return EXIT_OK if public.started else EXIT_FAILURE
