"""Per-user rate limiting, shared by every sidecar instance through Redis.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp). A rule of N requests per P seconds admits a burst of N, then one
request every P/N seconds; the long-run rate is exactly N/P. Why GCRA over a
sliding window:

- memory: one small string per (user, rule) — the "theoretical arrival time" —
  where a sliding-window log keeps up to N timestamps per user (N may be large);
- window edges: no fixed windows, so no 2N burst at a window boundary, and no
  approximation as in a weighted two-window counter; budget returns smoothly
  (one request every P/N) instead of all at once;
- exactness: the check and the update are one atomic script using the Redis
  server's clock, so instances with skewed clocks agree. The burst is N: of
  any number of requests (from any number of instances) arriving within P/N
  seconds on a full budget, exactly N are admitted.
  The price: a client that spends the full burst and then keeps pace can make
  up to 2N-1 requests within one P-second span (the burst plus the refill).

Denied requests write nothing, so they do not consume budget. A bucket's key
expires when it would be full again, so idle users cost no memory.

Redis unreachable: ``fail_open`` admits with ``X-RateLimit-Limit`` (``RateLimit-Policy``)
only (the rest is unknown); fail closed answers 503 with ``Retry-After``. Either way the event
is counted, and logged at most once per ``WARN_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from sidecar.config.model import RateLimitsConfig
from sidecar.core.errors import RateLimited, StoreUnavailable
from sidecar.core.types import Headers
from sidecar.ratelimit.rules import MICROS, Rule, RuleTable, bucket_key
from sidecar.redisconn.autopipeline import AutoPipeline, PipelineUnsupported, pack, unsupported
from sidecar.redisconn.client import (
    REDIS_ERRORS,
    UNREPLICATED,
    Durability,
    NotReplicated,
    error_code,
)

log = logging.getLogger("sidecar.ratelimit")

WARN_INTERVAL = 60.0
# Packed EVALSHA commands kept per (user, rule): the same few users call again and again.
_PACKED_MAX = 10_000

# KEYS[1] bucket; ARGV[1] emission interval P/N, ARGV[2] capacity N*(P/N), in µs.
# Returns {admitted 0/1, remaining, µs until full, µs until the next admission}.
# Times stay integral µs (exact in a double); written with %d, as Lua's default
# number-to-string keeps only 14 digits. Needs Redis >= 5 (effects replication),
# where a script may write after reading TIME.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > capacity then
  return {0, math.floor((capacity - (tat - now)) / interval), tat - now, next_tat - now - capacity}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return {1, math.floor((capacity - (next_tat - now)) / interval), next_tat - now, 0}
"""


def _seconds(micros: int) -> int:
    return max(1, math.ceil(micros / MICROS))


class Sent(NamedTuple):
    """A check already on its way to Redis (``RateLimiter.send``): whose, which rule,
    and the future of its reply. Either ``check`` takes it, or ``drop``."""

    user_id: str
    rule: Rule
    reply: asyncio.Future[Any]

    def drop(self) -> None:
        """It will not be checked (the request was refused first); the budget it took
        stays taken, as if the request had been admitted and then failed."""
        self.reply.add_done_callback(_ignore)


class RateLimiter(ABC):
    """What a limiter offers: ``RedisRateLimiter``, or ``DisabledRateLimiter`` when rate
    limiting is off."""

    async def admit(self, user_id: str, method: str, path: str) -> Headers:
        """Headers to add to the response; raise RateLimited when over the limit."""
        return await self.check(user_id, method, path)

    @abstractmethod
    def send(self, user_id: str, method: str, path: str) -> Sent | None:
        """Send the check for ``user_id`` now, for ``check`` to take later (None: nothing
        to send, or it cannot be sent ahead)."""

    @abstractmethod
    def check(
        self, user_id: str, method: str, path: str, sent: Sent | None = None
    ) -> Coroutine[Any, Any, Headers]:
        """``admit`` in two steps, so the caller can work while Redis answers: the check
        is on its way when this returns (``sent``, when it is this user's, already was);
        awaiting the result gives the headers (or raises RateLimited). The caller must
        await it, or close it."""

    async def close(self) -> None:
        return None

    async def reconnect(self) -> None:
        """Drop Redis connections of its own (the master changed)."""
        return None


class DisabledRateLimiter(RateLimiter):
    """Rate limiting turned off: admits everything, adds no headers, no Redis."""

    def send(self, user_id: str, method: str, path: str) -> Sent | None:
        return None

    def check(
        self, user_id: str, method: str, path: str, sent: Sent | None = None
    ) -> Coroutine[Any, Any, Headers]:
        return _no_headers()


class RedisRateLimiter(RateLimiter):
    def __init__(
        self,
        redis: Redis,
        config: RateLimitsConfig,
        *,
        retry_after: int,
        on_store_error: Callable[[], None] = lambda: None,
        on_readonly: Callable[[], None] = lambda: None,
        durability: Durability = UNREPLICATED,
    ) -> None:
        self._on_readonly = on_readonly
        self._redis = redis
        self._replicas = durability.replicas
        self._wait = pack("WAIT", durability.replicas, durability.timeout_ms)
        self._rules = RuleTable(config)
        self._script = redis.register_script(_GCRA)
        self._pipeline: AutoPipeline | None = None
        if isinstance(redis, Redis):  # not on Redis Cluster: redis-py routes per key there
            reason = unsupported(redis)
            if reason is None:
                self._pipeline = AutoPipeline(redis)
            else:
                _fall_back(reason)
        self._packed: dict[tuple[str, str], bytes] = {}
        self._fail_open = config.fail_open
        self._retry_after = retry_after
        self._on_store_error = on_store_error
        self._next_warning = 0.0
        self._unwarned = 0

    def send(self, user_id: str, method: str, path: str) -> Sent | None:
        if self._pipeline is None or self._replicas:
            return None
        rule = self._rules.match(method, path)
        # Queued now; the pipeline writes it at once when no reply is owed (at c1,
        # always), so Redis works on it while the caller does.
        return Sent(user_id, rule, self._pipeline.call(self._command(user_id, rule)))

    def check(
        self, user_id: str, method: str, path: str, sent: Sent | None = None
    ) -> Coroutine[Any, Any, Headers]:
        if sent is not None and sent.user_id != user_id:
            sent.drop()
            sent = None
        if sent is None:
            sent = self.send(user_id, method, path)
        rule = self._rules.match(method, path) if sent is None else sent.rule
        return self._check(user_id, rule, sent)

    async def _check(self, user_id: str, rule: Rule, sent: Sent | None) -> Headers:
        """The verdict; ``sent``: the script already queued on the pipeline, if it was."""
        try:
            reply = None
            if self._pipeline is not None:
                try:
                    packed = self._command(user_id, rule)
                    if self._replicas:
                        reply = await self._counted(self._pipeline, packed)
                    else:
                        queued = None if sent is None else sent.reply
                        reply = await self._pipeline.run_script(packed, _GCRA, queued)
                except PipelineUnsupported as exc:
                    await self._drop_pipeline(str(exc))
            elif sent is not None:  # queued before the pipeline was dropped, so it failed
                sent.drop()
            if reply is None:
                keys = [bucket_key(user_id, rule)]
                reply = await self._script(keys=keys, args=[rule.interval_us, rule.capacity_us])
        except REDIS_ERRORS as exc:
            return self._unavailable(rule, exc)
        admitted, remaining, reset_us, retry_us = map(int, reply)
        headers = rule.headers(max(0, remaining), _seconds(reset_us))
        if not admitted:
            raise RateLimited(_seconds(retry_us), headers)
        return headers

    async def _counted(self, pipeline: AutoPipeline, packed: bytes) -> Any:
        """The script's reply, once ``WAIT`` confirms the count is replicated (only
        called when replicas are required). Both are queued in the same loop iteration,
        so they go out on the same connection, the WAIT right behind the script."""
        for attempt in (1, 2):
            try:
                reply, acked = await asyncio.gather(
                    pipeline.call(packed), pipeline.call(self._wait)
                )
            except redis_errors.NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(_GCRA)
                continue
            if int(acked) < self._replicas:
                raise NotReplicated(f"{acked} of {self._replicas} replica(s) confirmed in time")
            return reply
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pipeline is not None:
            await self._pipeline.close()

    async def reconnect(self) -> None:
        if self._pipeline is not None:
            self._pipeline.reconnect()

    async def _drop_pipeline(self, reason: str) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:  # the first of the concurrent callers to find out
            _fall_back(reason)
            await pipeline.close()

    def _command(self, user_id: str, rule: Rule) -> bytes:
        packed = self._packed.get((user_id, rule.name))
        if packed is None:
            if len(self._packed) >= _PACKED_MAX:
                self._packed.clear()
            key = bucket_key(user_id, rule)
            packed = pack("EVALSHA", self._script.sha, 1, key, rule.interval_us, rule.capacity_us)
            self._packed[(user_id, rule.name)] = packed
        return packed

    def _unavailable(self, rule: Rule, exc: Exception) -> Headers:
        self._on_store_error()
        if error_code(exc) == "READONLY":
            self._on_readonly()
        self._unwarned += 1
        now = time.monotonic()
        if now >= self._next_warning:
            log.warning(
                "rate limiter cannot reach Redis (%s); failing %s; %d failed check(s) since "
                "the last warning",
                type(exc).__name__,
                "open" if self._fail_open else "closed",
                self._unwarned,
            )
            self._next_warning = now + WARN_INTERVAL
            self._unwarned = 0
        if self._fail_open:
            return list(rule.fixed_headers)
        raise StoreUnavailable(self._retry_after) from exc


async def _no_headers() -> Headers:
    return []


def _ignore(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled():
        reply.exception()  # retrieved: asyncio does not log it as lost


def _fall_back(reason: str) -> None:
    log.warning(
        "rate limiter: %s; using redis-py's script call instead (correct, but more CPU "
        "per request; pin a redis-py version the auto-pipeliner supports)",
        reason,
    )


def limiter_for(
    config: RateLimitsConfig,
    redis: Redis,
    *,
    retry_after: int,
    on_store_error: Callable[[], None] = lambda: None,
    on_readonly: Callable[[], None] = lambda: None,
    durability: Durability = UNREPLICATED,
) -> RateLimiter:
    """The limiter ``config`` asks for: the no-op one when rate limiting is off."""
    if not config.enabled:
        return DisabledRateLimiter()
    return RedisRateLimiter(
        redis,
        config,
        retry_after=retry_after,
        on_store_error=on_store_error,
        on_readonly=on_readonly,
        durability=durability,
    )
