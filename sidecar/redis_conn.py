"""Redis clients built from ``redis.url``: redis://, rediss://, unix://, Sentinel, Cluster."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from sidecar.config import RedisConfig


def connect(url: str, settings: RedisConfig) -> Redis:
    """A client for ``url`` (already resolved from ``embedded``). No I/O happens here.

    Sentinel form: ``redis+sentinel://[:password@]host:port[,host:port]/service[/db]``.
    Cluster form: ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS).
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_seconds,
        "socket_connect_timeout": settings.socket_timeout_seconds,
        "health_check_interval": 10,
        # redis-py 8 retries 10 times with backoff by default; a request must fail
        # fast instead (503 / fail-open). One retry covers a pooled connection that
        # went stale when Redis restarted.
        "retry": Retry(NoBackoff(), 1),
    }
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        return _sentinel(parts.netloc, parts.path, parts.query, options)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        plain = url.replace("+cluster", "", 1)
        cluster = RedisCluster.from_url(plain, **_cluster_options(options))
        return cast(Redis, cluster)  # same command surface for what the sidecar uses
    client: Redis = Redis.from_url(url, **options)
    return client


def _sentinel(netloc: str, path: str, query: str, options: dict[str, Any]) -> Redis:
    credentials, _, hosts = netloc.rpartition("@")
    password = credentials.partition(":")[2] or None
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":")
        nodes.append((host or node, int(port) if port.isdigit() else 26379))
    segments = [s for s in path.split("/") if s]
    service = segments[0] if segments else "mymaster"
    db = int(segments[1]) if len(segments) > 1 else 0
    ssl = parse_qs(query).get("ssl", ["false"])[0] == "true"
    sentinel = Sentinel(nodes, password=password, db=db, ssl=ssl, **options)  # type: ignore[no-untyped-call]
    master: Redis = sentinel.master_for(service)
    return master


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "health_check_interval"}
