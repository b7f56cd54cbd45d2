"""The Python peer to beat: asgiproxy mounted as a plain reverse proxy.

Runs in bench/.venv under uvicorn with uvloop + httptools, one worker, as the sidecar
does. asgiproxy's own defaults would cap it: ``ProxyContext`` holds a semaphore of 20
concurrent upstream requests, and its lazily made ``ClientSession`` uses aiohttp's
default pool of 100 connections. Both are raised to the sidecar's ``upstream.pool_size``
(256 by default) so the peer is limited by its code, not by its configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvicorn
from asgiproxy.config import BaseURLProxyConfigMixin, ProxyConfig
from asgiproxy.context import ProxyContext
from asgiproxy.simple_proxy import make_simple_proxy_app

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def build(upstream: str, concurrency: int) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    config = type(
        "Config",
        (BaseURLProxyConfigMixin, ProxyConfig),
        {"upstream_base_url": upstream, "rewrite_host_header": urlsplit(upstream).netloc},
    )()
    context = ProxyContext(config, max_concurrency=concurrency)
    proxy = make_simple_proxy_app(context)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await proxy(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The session asgiproxy would create on first use, with the pool raised.
                context._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=concurrency),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await context.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    uvicorn.run(
        build(args.upstream, args.concurrency),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
