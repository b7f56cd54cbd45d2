"""Run the sidecar: the public listener and the admin listener in one event loop,
an embedded Redis when configured, and a graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn

from sidecar import accesslog
from sidecar.admin import build_admin_app
from sidecar.app import Sidecar
from sidecar.config import Config
from sidecar.embedded import EmbeddedRedis

log = logging.getLogger("sidecar")


class _AdminServer(uvicorn.Server):
    """The admin listener leaves signal handling to the public one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def resolve_redis_url(config: Config, *, share: bool = False) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting the embedded server when configured."""
    if config.redis.url != "embedded":
        return config.redis.url, None
    embedded = EmbeddedRedis(config.redis.embedded_dir)
    embedded.start(share=share)
    return embedded.url, embedded


def run(config: Config, *, example_upstream: bool = False) -> int:
    accesslog.configure(config.logging.level)
    url, embedded = resolve_redis_url(config)
    try:
        _run_loop(_serve(config, url, example_upstream))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _run_loop(main: asyncio.Future[None] | object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


async def _serve(config: Config, redis_url: str, example_upstream: bool) -> None:
    sidecar = Sidecar(config, redis_url)
    public = uvicorn.Server(
        uvicorn.Config(
            sidecar,
            host=config.server.host,
            port=config.server.port,
            lifespan="on",
            http="httptools",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(config.server.graceful_timeout_seconds),
        )
    )
    admin = _AdminServer(
        uvicorn.Config(
            build_admin_app(sidecar),
            host=config.admin.host,
            port=config.admin.port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
        )
    )
    helpers = [admin]
    if example_upstream:
        helpers.append(_example_upstream(config))
    await _warn_if_redis_down(sidecar)
    helper_tasks = [asyncio.create_task(h.serve()) for h in helpers]
    try:
        await public.serve()
    finally:
        for helper in helpers:
            helper.should_exit = True
        await asyncio.gather(*helper_tasks, return_exceptions=True)
    if not public.started:
        raise SystemExit(1)


def _example_upstream(config: Config) -> _AdminServer:
    from urllib.parse import urlsplit

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
    return _AdminServer(settings)


async def _warn_if_redis_down(sidecar: Sidecar) -> None:
    """Start anyway: JWT traffic works without Redis, /readyz says 503 until it is back."""
    from sidecar.store import REDIS_ERRORS

    try:
        await sidecar.redis.ping()
    except REDIS_ERRORS as exc:
        reason = type(exc).__name__
        log.warning("redis unreachable at start (%s); serving, /readyz reports 503", reason)
