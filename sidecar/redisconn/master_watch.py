"""Follow the Redis master through a failover.

redis-py asks Sentinel for the master only when it opens a connection, and the
sidecar's connections are long-lived (the pool, the rate limiter's pipeline, the
revocation subscription): after a failover they kept writing to the deposed master
for ~11 s, until Sentinel demoted it and its resync discarded those writes. So:

- behind Sentinel, every sentinel's ``+switch-master`` channel is followed; a switch
  of our service drops the pool's idle connections, the rate limiter's pipeline
  connection and the revocation subscription, and their next connections go to the
  master it announced (a connection busy with a command is left to finish it: a
  write there is not WAIT-acknowledged, so it is a 503, never an acknowledged write
  lost);
- on any Redis, a READONLY reply to a write means "this server was demoted": the
  same drop.

Each drop is counted (``sidecar_redis_master_switches_total``) and logged at WARNING.
Writes wait for replicas (redis_conn.Durability), so a write that still reached the
old master in between is answered 503, never acknowledged and then lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from sidecar.redisconn.client import REDIS_ERRORS

log = logging.getLogger("sidecar.redis")

_RETRY_DELAY = 0.5
_QUIET = 1.0  # seconds after a drop in which further reports of a switch are the same one
SWITCH_CHANNEL = "+switch-master"


class MasterWatch:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._droppers: list[Callable[[], Awaitable[None]]] = []
        self.switches: dict[str, int] = {"sentinel": 0, "readonly": 0}
        self._dropping: asyncio.Task[None] | None = None
        self._last_switch = -_QUIET
        pool = getattr(redis, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        self._service: str | None = getattr(pool, "service_name", None)
        self._sentinels: list[Redis] = list(manager.sentinels) if manager is not None else []

    def on_switch(self, drop: Callable[[], Awaitable[None]]) -> None:
        """``drop`` closes connections the pool does not own (e.g. a pipeline's)."""
        self._droppers.append(drop)

    def demoted(self) -> None:
        """A write got READONLY: whatever we are connected to is a replica now."""
        self._switch("readonly", "a write was refused with READONLY")

    async def run(self) -> None:
        """Follow ``+switch-master`` on every sentinel (none: nothing to do)."""
        if not self._sentinels:
            return
        await asyncio.gather(*(self._follow(s) for s in self._sentinels))

    async def _follow(self, sentinel: Redis) -> None:
        while True:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(SWITCH_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    data = message["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    name, _, where = text.partition(" ")
                    if name == self._service:
                        self._switch("sentinel", f"sentinel reports {where}", new_master(where))
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS:
                pass  # that sentinel is down; the others still report
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(_RETRY_DELAY)

    def _switch(self, source: str, reason: str, master: tuple[str, int] | None = None) -> None:
        follow = getattr(getattr(self._redis, "connection_pool", None), "follow", None)
        if master is not None and follow is not None:
            follow(master)  # before the drop: reconnections go there, whatever a sentinel says
        now = time.monotonic()
        if now - self._last_switch < _QUIET:
            # Every sentinel reports the same switch, and every write that reached the
            # old master gets READONLY: one drop (and one warning) for all of them.
            return
        self._last_switch = now
        self.switches[source] += 1
        log.warning("redis master changed (%s): dropping every connection to it", reason)
        self._dropping = asyncio.ensure_future(self._drop_all())

    async def _drop_all(self) -> None:
        # A Cluster client has no single pool: it follows MOVED replies by itself.
        pool: Any = getattr(self._redis, "connection_pool", None)
        if pool is not None:
            # Idle ones only: closing a connection another task is opening or using
            # breaks redis-py (AttributeError on its writer). One in use finishes its
            # command (a write on the old master is not WAIT-acknowledged: a 503).
            with contextlib.suppress(*REDIS_ERRORS):
                await pool.disconnect(inuse_connections=False)
        for drop in self._droppers:
            with contextlib.suppress(*REDIS_ERRORS):
                await drop()


def new_master(where: str) -> tuple[str, int] | None:
    """The new master's address in a ``+switch-master`` message's
    ``<old-ip> <old-port> <new-ip> <new-port>``; None if it is not that shape."""
    parts = where.split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[2], int(parts[3])
