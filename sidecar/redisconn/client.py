"""Redis clients built from ``redis.url``: redis://, rediss://, unix://, Sentinel, Cluster."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from sidecar.config.model import RedisConfig

# Every failure of a Redis call: the caller answers 503 (or fails open), never 500.
# Besides connection errors these are error replies meaning "cannot serve now"
# (UNAVAILABLE_CODES) — redis-py gives some their own class (READONLY, LOADING,
# TRYAGAIN, CLUSTERDOWN, MASTERDOWN) and others a plain ResponseError (NOREPLICAS,
# MISCONF, BUSY, OOM) — and, caught here too so a client never sees a 500, replies
# that mean a bug (WRONGTYPE, a script error); ``unexpected`` tells them apart for logs.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
)
UNAVAILABLE_CODES = frozenset(
    {
        *("NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"),
        *("MISCONF", "BUSY", "OOM"),
    }
)
# A replica answers WAIT with a plain ERR. After a write script that wrote nothing (so
# met no READONLY), it is the only sign that the server is no longer the master.
_WAIT_ON_REPLICA = "WAIT cannot be used with replica instances"


def error_code(exc: BaseException) -> str | None:
    """The code of a Redis error reply (``READONLY``, ``NOREPLICAS``...), else None.

    Redis 7 keeps the code of an error raised inside a script; Redis 6 wraps it as
    ``ERR Error running script (...): @user_script:1: -NOREPLICAS ...``, so there the
    code is the word after the last ``: -``. A WAIT refused by a replica is READONLY.
    """
    if not isinstance(exc, redis_errors.ResponseError):
        return None
    code, text = getattr(exc, "status_code", None), str(exc)  # redis-py strips a code it recognised
    if _WAIT_ON_REPLICA in text:
        return "READONLY"
    if not code:
        code, _, text = text.partition(" ")
    if code == "ERR" and text.startswith("Error running script"):
        code = text.rpartition(": -")[2].partition(" ")[0]
    return code if code.isalpha() and code.isupper() else None


def unexpected(exc: BaseException) -> bool:
    """An error that does not mean "Redis cannot serve now" but a bug."""
    if isinstance(exc, redis_errors.ResponseError):
        return error_code(exc) not in UNAVAILABLE_CODES
    if isinstance(exc, redis_errors.SlotNotCoveredError):
        return False
    return isinstance(exc, (redis_errors.DataError, redis_errors.RedisClusterException))


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
    # A bounded pool: when Redis stalls, requests waiting on it would otherwise each
    # open a connection, and the pool keeps them all open afterwards. Past the bound a
    # call waits up to the socket timeout for a free connection, then fails (a 503).
    bounds = {
        "max_connections": settings.max_connections,
        "timeout": settings.socket_timeout_seconds,
    }
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        return _sentinel(parts.netloc, parts.path, parts.query, options, bounds)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        plain = url.replace("+cluster", "", 1)
        cluster = RedisCluster.from_url(
            plain, max_connections=settings.max_connections, **_cluster_options(options)
        )
        return cast(Redis, cluster)  # same command surface for what the sidecar uses
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **options, **bounds))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's pool under Sentinel, bounded and waiting like BlockingConnectionPool.

    ``follow`` pins the master a ``+switch-master`` announced, for ``PIN_SECONDS``, as
    Jedis does. Asked just after a switch, a sentinel that has not heard of it yet
    still names the deposed master, which takes connections until Sentinel demotes it
    seconds later: meanwhile writes there are refused (WAIT), reads are stale and
    revocations published on the new master never arrive. Past the pin, Sentinel is
    asked again (a pin from a missed or wrong announcement does not last)."""

    PIN_SECONDS = 30.0
    _pinned: tuple[str, int] | None = None
    _pinned_until = 0.0

    def follow(self, address: tuple[str, int], seconds: float | None = None) -> None:
        self._pinned = address
        self._pinned_until = time.monotonic() + (self.PIN_SECONDS if seconds is None else seconds)

    async def get_master_address(self) -> Any:
        if self._pinned is None or time.monotonic() >= self._pinned_until:
            return await super().get_master_address()  # type: ignore[no-untyped-call]
        self.master_address = self._pinned  # connections elsewhere are not taken back
        return self._pinned


def _sentinel(
    netloc: str, path: str, query: str, options: dict[str, Any], bounds: dict[str, Any]
) -> Redis:
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
    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        nodes,
        sentinel_kwargs={**sentinel_kwargs, "max_connections": bounds["max_connections"]},
        password=password,
        db=db,
        ssl=ssl,
        **options,
    )
    master: Redis = sentinel.master_for(
        service, connection_pool_class=_BlockingSentinelPool, **bounds
    )
    return master


def _cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "health_check_interval"}


class NotReplicated(redis_errors.RedisError):
    """Redis took a write, but fewer replicas than required confirmed it in time: a
    failover now could undo it, so it is not acknowledged (a 503, like any Redis error)."""


@dataclass(frozen=True, slots=True)
class Durability:
    """How many replicas must confirm a write (``WAIT``), and for how long to wait."""

    replicas: int
    timeout_ms: int

    async def write(
        self, redis: Redis, route: str, queue: Callable[[Any], Awaitable[Any]]
    ) -> list[Any]:
        """Run the commands ``queue`` adds to a pipeline, then ``WAIT`` on the same
        connection; their replies, or NotReplicated. All the commands' keys share the
        slot of ``route`` (on a Cluster, the WAIT goes to that slot's master)."""
        async with redis.pipeline(transaction=False) as pipe:
            await queue(pipe)
            if self.replicas:
                where: dict[str, Any] = {}
                if isinstance(redis, RedisCluster):
                    where = {"target_nodes": redis.get_node_from_key(route)}
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms, **where)
            # Errors come back unannotated (raise_on_error prefixes the message, and
            # so hides the error code) and are raised here, the first one first.
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if self.replicas:
            acked = int(replies.pop())
            if acked < self.replicas:
                raise NotReplicated(f"{acked} of {self.replicas} replica(s) confirmed in time")
        return replies


# A write is acknowledged once the master has it (a single Redis, or a test's store).
UNREPLICATED = Durability(0, 1)


def durability(url: str, settings: RedisConfig) -> Durability:
    replicas = settings.min_replicas_acked
    if replicas is None:
        replicas = 1 if urlsplit(url).scheme == "redis+sentinel" else 0
    # Under the socket timeout: a WAIT that takes long is "not replicated", not a
    # connection that stopped answering (which would be dropped).
    seconds = min(settings.replication_timeout_seconds, 0.8 * settings.socket_timeout_seconds)
    return Durability(replicas, max(1, round(seconds * 1000)))
