"""Follows the revocation channel and evicts revoked keys from the local cache.

The subscription is health-checked with a PING every second; no traffic for
``_SILENCE_LIMIT`` seconds, or any error, counts as lost: the cache stops
trusting its entries until the subscription is back (see keycache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from sidecar.keys.cache import REVOKED, KeyCache
from sidecar.keys.schema import REVOCATION_CHANNEL, STATE_CHANNEL
from sidecar.keys.view import as_text
from sidecar.redisconn.client import REDIS_ERRORS

log = logging.getLogger("sidecar.revocations")

_PING_EVERY = 1.0
_SILENCE_LIMIT = 3.0
_RETRY_DELAY = 0.5


class RevocationListener:
    def __init__(
        self, redis: Redis, cache: KeyCache, on_message: Callable[[], None] | None = None
    ) -> None:
        self._redis = redis
        self._cache = cache
        self._on_message = on_message or (lambda: None)
        self.connected = asyncio.Event()
        self.errors = 0  # lost subscriptions, for metrics
        self._moved = False

    async def reconnect(self) -> None:
        """The master changed: subscribe again (within ``_PING_EVERY``), on the new one;
        a deposed master would not relay revocations published on its successor."""
        self._moved = True

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (*REDIS_ERRORS, _Silent, _Moved) as exc:  # type: ignore[misc]
                # Once per outage, not once per retry.
                report = log.warning if self.connected.is_set() else log.debug
                report("revocation feed lost (%s); retrying", type(exc).__name__)
            except Exception:
                # Anything else too: a listener that died quietly would leave the cache
                # trusting entries that no revocation can reach any more.
                log.exception("revocation feed failed; retrying")
            self.errors += 1
            self._cache.desync()
            self.connected.clear()
            await asyncio.sleep(_RETRY_DELAY)

    async def _follow(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(REVOCATION_CHANNEL, STATE_CHANNEL)
            last_heard = time.monotonic()
            last_ping = 0.0
            while True:
                if self._moved:
                    self._moved = False
                    raise _Moved()
                now = time.monotonic()
                if now - last_ping >= _PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
                message = await pubsub.get_message(timeout=_PING_EVERY)
                now = time.monotonic()
                if message is None:
                    if now - last_heard > _SILENCE_LIMIT:
                        raise _Silent()
                    continue
                last_heard = now
                kind = message["type"]
                if kind == "subscribe":
                    if as_text(message["channel"]) == REVOCATION_CHANNEL:  # not once per channel
                        self._cache.resync()
                        self.connected.set()
                        # At start-up the feed coming up is the expected state, and this
                        # line would follow the start-up's own "listening" line; after a
                        # loss (a warning) it is news.
                        report = log.info if self.errors else log.debug
                        report("revocation feed up; key cache cleared")
                elif kind == "message":
                    data = as_text(message["data"])
                    if as_text(message["channel"]) == STATE_CHANNEL:
                        self._hold(data)
                    else:
                        self._cache.evict(data)
                        self._on_message()
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _hold(self, data: str) -> None:
        key_hash, _, until_us = data.partition(" ")
        try:
            until = REVOKED if until_us == "0" else int(until_us) / 1_000_000
        except ValueError:
            log.warning("revocation state message not understood; ignored")
            return
        self._cache.hold(key_hash, until)


class _Silent(Exception):
    """No reply from the subscription within the silence limit."""


class _Moved(Exception):
    """The Redis master changed."""
