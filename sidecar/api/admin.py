"""The admin listener: liveness, readiness and Prometheus metrics, on its own port.

- ``/healthz``: 200 while the process serves at all (restart it if this fails).
- ``/readyz``: 200 when Redis takes a write (replicated as ``redis.min_replicas_acked``
  asks: the probe is a durable write like a key's) and a TCP connection to the upstream
  (and to the test-key upstream, when there is one) opens; otherwise 503 with the
  reasons (take it out of the load balancer).
- ``/metrics``: Prometheus text format.
- ``/.well-known/jwks.json``: the identity assertion's public keys (when assertions are on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar.proxy.upstream import UpstreamClient
from sidecar.redisconn.client import REDIS_ERRORS, Durability, NotReplicated, error_code

CHECK_TIMEOUT = 2.0  # a readiness probe answers within this, whatever hangs
# In the key data's slot, so on a Cluster the probe writes where keys are written.
PROBE_KEY = "callcov:{callcov-keys}:readyz"


def build_admin_app(
    *,
    redis: Redis,
    durability: Durability,
    upstream: UpstreamClient,
    scrape: Callable[[], bytes],
    problems: Callable[[], list[str]] = list,
    jwks: dict[str, Any] | None = None,
    test_upstream: UpstreamClient | None = None,
) -> Starlette:
    """``scrape`` renders the metrics; ``problems`` adds reasons not to be ready
    (shutting down, a worker missing)."""

    async def redis_problem() -> str | None:
        async def probe(pipe: Any) -> None:
            pipe.set(PROBE_KEY, b"1", px=60_000)

        try:
            await asyncio.wait_for(durability.write(redis, PROBE_KEY, probe), CHECK_TIMEOUT)
        except TimeoutError:
            return "redis unreachable (no answer)"
        except NotReplicated as exc:
            return f"redis writes not replicated ({exc})"
        except REDIS_ERRORS as exc:
            code = error_code(exc)
            if code is not None:  # an error reply: Redis answers, but refuses writes
                return f"redis cannot take writes ({code})"
            return f"redis unreachable ({type(exc).__name__})"
        return None

    async def upstream_problem(client: UpstreamClient | None, name: str) -> str | None:
        if client is None:
            return None
        try:
            connectable = await asyncio.wait_for(client.connectable(), CHECK_TIMEOUT)
        except TimeoutError:
            connectable = False
        return None if connectable else f"{name} not connectable"

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        found = await asyncio.gather(
            redis_problem(),
            upstream_problem(upstream, "upstream"),
            upstream_problem(test_upstream, "test upstream"),
        )
        reasons = [*problems(), *(p for p in found if p is not None)]
        if reasons:
            return JSONResponse({"status": "unready", "problems": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(scrape(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if jwks is not None:
        published = jwks

        async def keys(request: Request) -> Response:
            return JSONResponse(published, headers={"cache-control": "public, max-age=300"})

        routes.append(Route("/.well-known/jwks.json", keys))
    return Starlette(routes=routes)
