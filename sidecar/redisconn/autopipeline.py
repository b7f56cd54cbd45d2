"""Automatic pipelining of hot-path Redis commands on one dedicated connection.

Commands issued in the same event-loop iteration go out together in one write, and
their replies are handed back in order as hiredis parses them. Each caller still waits
for exactly one round trip of its own command; what changes is the client cost. There
is no task per command or per batch: a caller awaits a future, the connection's
protocol parses replies as they arrive and settles the futures, and a deadline timer
per connection (not per command) catches a Redis that stops answering.

Why not redis-py's own calls: their per-command objects and tasks cost far more CPU than
the command itself (docs/design-notes.md, "The auto-pipeline"). At one client
connection two choices save event-loop iterations: a command finding no reply owed is
written at once instead of at the end of the iteration, and replies are parsed in
``data_received`` instead of by a reader task (whose wake-up costs an iteration before
the caller's).

redis-py still opens each connection (TLS, unix sockets, AUTH, SELECT, Sentinel
discovery); after its handshake the sidecar takes over its transport. Its streams are
private attributes of redis-py (``_reader``/``_writer``): ``unsupported`` checks at
start-up that this redis-py still has them, and a connection that turns out not to
have them raises ``PipelineUnsupported`` (never a Redis error: the caller must switch
to redis-py's public calls for good, not fail open per request).
Commands arrive packed (``pack``), so a caller can pack a repeated command once.
A connection error or a missed deadline fails every command waiting on that
connection; the next command opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

import hiredis
import redis as redis_package
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from sidecar.redisconn.client import error_code

EncodableArg = str | int | float | bytes

# Error replies that mean "this Redis cannot serve now" (REDIS_ERRORS classes) or that
# a caller handles (NOSCRIPT), as redis-py maps them; any other error reply fails only
# its own command with a plain ResponseError.
_ERROR_CLASSES: dict[str, type[redis_errors.RedisError]] = {
    "NOSCRIPT": redis_errors.NoScriptError,
    "LOADING": redis_errors.BusyLoadingError,
    "READONLY": redis_errors.ReadOnlyError,
    "TRYAGAIN": redis_errors.TryAgainError,
    "CLUSTERDOWN": redis_errors.ClusterDownError,
    "MASTERDOWN": redis_errors.MasterDownError,
}
_DEFAULT_TIMEOUT = 5.0
# redis-py's private stream attributes on an asyncio connection (redis-py 5 to 8).
STREAM_ATTRIBUTES = ("_reader", "_writer")


class PipelineUnsupported(Exception):
    """This redis-py's connections are not what the pipeline drives; use redis-py."""


def unsupported(redis: Redis) -> str | None:
    """Why the pipeline cannot drive ``redis``'s connections, or None when it can.

    Builds one connection object without connecting (no I/O) and checks the private
    attributes and the ``disconnect(nowait=...)`` parameter the pipeline relies on.
    """
    pool = redis.connection_pool
    try:
        probe = pool.connection_class(**pool.connection_kwargs)
    except Exception as exc:  # a constructor that changed its keywords
        return f"cannot build a redis-py connection ({type(exc).__name__}: {exc})"
    missing = [name for name in STREAM_ATTRIBUTES if not hasattr(probe, name)]
    disconnect = getattr(probe, "disconnect", None)
    if disconnect is None or "nowait" not in inspect.signature(disconnect).parameters:
        missing.append("disconnect(nowait=...)")
    if missing:
        version = getattr(redis_package, "__version__", "?")
        return f"redis-py {version} connections have no {', '.join(missing)}"
    return None


def pack(*args: EncodableArg) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = repr(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _error(reply: hiredis.ReplyError) -> redis_errors.RedisError:
    message = str(reply)
    code = message.split(" ", 1)[0]
    return _ERROR_CLASSES.get(code, redis_errors.ResponseError)(message)


class _Link(asyncio.Protocol):
    """One open connection and the replies it owes, oldest first.

    It takes over as the connection's protocol from redis-py's stream reader: replies
    are parsed as their bytes arrive and complete their futures there and then. A
    reader task would cost a task step and an event-loop iteration per reply."""

    def __init__(self, connection: AbstractConnection, on_lost: _OnLost) -> None:
        reader_name, writer_name = STREAM_ATTRIBUTES
        reader: asyncio.StreamReader | None = getattr(connection, reader_name, None)
        writer: asyncio.StreamWriter | None = getattr(connection, writer_name, None)
        if not isinstance(reader, asyncio.StreamReader) or writer is None:
            raise PipelineUnsupported("a connected redis-py connection has no stream pair")
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.transport = writer.transport
        self.owed: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.last_reply = time.monotonic()
        self.deadline: asyncio.TimerHandle | None = None
        self.closed = False
        self._parser = hiredis.Reader()
        self._on_lost = on_lost
        # redis-py's handshake has read every reply it was owed: no bytes are pending.
        self.transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        owed = self.owed
        demoted = False
        try:
            self._parser.feed(data)
            while (reply := self._parser.gets()) is not False:
                future = owed.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    error = _error(reply)
                    demoted |= error_code(error) == "READONLY"
                    if not future.done():
                        future.set_exception(error)
                elif not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply not asked for
            self._on_lost(self, redis_errors.ConnectionError(str(exc) or type(exc).__name__))
            return
        self.last_reply = time.monotonic()
        if demoted:
            # This server became a replica (a failover): reconnect, and through
            # Sentinel reach the new master.
            self._on_lost(self, redis_errors.ConnectionError("Redis is read-only"))

    def eof_received(self) -> bool:
        self._on_lost(self, redis_errors.ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = (str(exc) or type(exc).__name__) if exc else "Redis closed the connection"
        self._on_lost(self, redis_errors.ConnectionError(reason))


_OnLost = Callable[[_Link, Exception], None]


class AutoPipeline:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pool = redis.connection_pool
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._timeout = float(timeout) if timeout else _DEFAULT_TIMEOUT
        self._link: _Link | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._unsent: list[bytes] = []
        self._unsent_futures: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._closing: set[asyncio.Future[None]] = set()

    async def run_script(
        self, packed: bytes, script: str, sent: asyncio.Future[Any] | None = None
    ) -> Any:
        """An ``EVALSHA`` command (packed); loads ``script`` if Redis lost it. ``sent``:
        the same command already queued with ``call``, to wait for instead of sending."""
        try:
            return await (self.call(packed) if sent is None else sent)
        except redis_errors.NoScriptError:
            await self._redis.script_load(script)  # Redis restarted and lost its script cache
            return await self.call(packed)

    def reconnect(self) -> None:
        """Fail what is owed on the current connection and close it; the next command
        opens a new one (through Sentinel: to the current master)."""
        link = self._link
        if link is not None:
            self._drop(link, redis_errors.ConnectionError("Redis master changed"))

    def execute(self, *args: EncodableArg) -> asyncio.Future[Any]:
        return self.call(pack(*args))

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (or error).

        As in Nagle's algorithm, a command finding no reply owed goes out at once (an
        event-loop iteration sooner; under load, replies are owed nearly always);
        while replies are owed, commands are coalesced and written together at the
        end of the loop iteration."""
        link = self._link
        if link is not None and not link.owed and not self._unsent and not link.closed:
            future: asyncio.Future[Any] = link.loop.create_future()
            self._write(link, packed, (future,))
            return future
        # The link's loop when there is one: on Python 3.11, get_running_loop() costs a
        # getpid() system call (once per request under load, strace -c).
        loop = link.loop if link is not None else asyncio.get_running_loop()
        future = loop.create_future()
        self._unsent.append(packed)
        self._unsent_futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
        self._fail_unsent(redis_errors.ConnectionError("pipeline closed"))
        link, self._link = self._link, None
        if link is not None:
            self._drop(link, redis_errors.ConnectionError("pipeline closed"))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._unsent:
            return
        link = self._link
        if link is None or link.closed:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # _connect flushes once connected
        data = self._unsent[0] if len(self._unsent) == 1 else b"".join(self._unsent)
        futures, self._unsent, self._unsent_futures = self._unsent_futures, [], []
        self._write(link, data, futures)

    def _write(self, link: _Link, data: bytes, futures: Iterable[asyncio.Future[Any]]) -> None:
        link.owed.extend(futures)
        if link.deadline is None:
            link.last_reply = time.monotonic()
            self._arm(link, self._timeout)
        try:
            link.transport.write(data)
        except Exception as exc:  # the transport is closing: the reader will see it too
            self._drop(link, redis_errors.ConnectionError(str(exc) or type(exc).__name__))

    async def _connect(self) -> None:
        connection = None
        try:
            connection = self._pool.connection_class(**self._pool.connection_kwargs)
            await connection.connect()  # type: ignore[no-untyped-call]
            link = _Link(connection, self._drop)
        except PipelineUnsupported as exc:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            self._fail_unsent(exc)
            return
        except Exception as exc:  # REDIS_ERRORS, AuthenticationError, a bad TLS setup...
            self._fail_unsent(redis_errors.ConnectionError(str(exc) or type(exc).__name__))
            return
        finally:
            self._connecting = None
        self._link = link
        self._flush()

    def _arm(self, link: _Link, delay: float) -> None:
        link.deadline = link.loop.call_later(delay, self._check, link)

    def _check(self, link: _Link) -> None:
        """The deadline timer: replies must keep coming while any are owed."""
        link.deadline = None
        if link.closed or not link.owed:
            return
        silent = time.monotonic() - link.last_reply
        if silent >= self._timeout:
            self._drop(link, redis_errors.TimeoutError("Redis did not answer in time"))
        else:
            self._arm(link, self._timeout - silent)

    def _drop(self, link: _Link, error: Exception) -> None:
        """Fail everything owed on ``link`` and close it; the next command reconnects."""
        if link.closed:
            return
        link.closed = True
        if self._link is link:
            self._link = None
        if link.deadline is not None:
            link.deadline.cancel()
        while link.owed:
            future = link.owed.popleft()
            if not future.done():
                future.set_exception(error)
        link.transport.abort()
        # Lets redis-py forget its streams (else it warns of an unclosed connection).
        closing = asyncio.ensure_future(link.connection.disconnect(nowait=True))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def _fail_unsent(self, error: Exception) -> None:
        futures, self._unsent, self._unsent_futures = self._unsent_futures, [], []
        for future in futures:
            if not future.done():
                future.set_exception(error)
