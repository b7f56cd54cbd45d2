"""The admin listener: liveness, readiness and Prometheus metrics, on its own port.

- ``/healthz``: 200 while the process serves at all (restart it if this fails).
- ``/readyz``: 200 when Redis takes a write (replicated as ``redis.min_replicas_acked``
  asks: the probe is a durable write like a key's) and a TCP connection to the upstream
  (and to the test-key upstream, when there is one) opens; otherwise 503 with the
  reasons (take it out of the load balancer).
- ``/metrics``: Prometheus text format.
- ``/.well-known/jwks.json``: the identity assertion's public keys (when assertions are on).
- ``/audit/events?after=<id>&limit=<n>``: the audit trail for a SIEM that polls,
  ``{"events": [...], "next": <id or null>}``, oldest first (docs/security/audit.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field, TypeAdapter, ValidationError
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar.core.errors import StoreUnavailable
from sidecar.keys.audit_events import valid_event_id
from sidecar.keys.audit_reader import AuditReader
from sidecar.proxy.upstream import UpstreamClient
from sidecar.redisconn.client import REDIS_ERRORS, Durability, NotReplicated, error_code

CHECK_TIMEOUT = 2.0  # a readiness probe answers within this, whatever hangs
# In the key data's slot, so on a Cluster the probe writes where keys are written.
PROBE_KEY = "callcov:{callcov-keys}:readyz"
FEED_LIMIT = TypeAdapter(Annotated[int, Field(ge=1, le=1000)])
DEFAULT_FEED_LIMIT = 100


def build_admin_app(
    *,
    redis: Redis,
    durability: Durability,
    upstream: UpstreamClient,
    scrape: Callable[[], bytes],
    problems: Callable[[], list[str]] = list,
    jwks: dict[str, Any] | None = None,
    test_upstream: UpstreamClient | None = None,
    audit: AuditReader | None = None,
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
    if audit is not None:
        reader = audit

        async def audit_events(request: Request) -> Response:
            query = request.query_params
            errors: list[dict[str, Any]] = []
            limit = DEFAULT_FEED_LIMIT
            try:
                limit = FEED_LIMIT.validate_python(query.get("limit", DEFAULT_FEED_LIMIT))
            except ValidationError as exc:
                errors += _query_errors(exc, "limit")
            after = query.get("after")
            if after is not None and not valid_event_id(after):
                errors.append(
                    {
                        "type": "value_error",
                        "loc": ["query", "after"],
                        "msg": "Value error, must be an event id (<milliseconds>-<sequence>)",
                        "input": after,
                    }
                )
            if errors:
                return JSONResponse({"detail": errors}, status_code=422)
            try:
                events = await reader.feed(after, limit)
            except StoreUnavailable as exc:
                return JSONResponse(
                    {"detail": exc.detail},
                    status_code=503,
                    headers={"retry-after": str(exc.retry_after)},
                )
            return JSONResponse({"events": events, "next": events[-1]["id"] if events else None})

        routes.append(Route("/audit/events", audit_events))
    return Starlette(routes=routes)


def _query_errors(exc: ValidationError, name: str) -> list[dict[str, Any]]:
    """Pydantic's errors in FastAPI's shape, for query parameter ``name``."""
    return [
        {**{k: v for k, v in e.items() if k != "ctx"}, "loc": ["query", name, *e["loc"]]}
        for e in exc.errors(include_url=False)
    ]
