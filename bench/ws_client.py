"""WebSocket client side of the relay measurements (bench/experiments.py runs it in-process).

Both talk to ``bench/upstreams.py ws``, a sink that counts the bytes of binary messages
and answers a text message with the count so far (then resets it). No compression and
no keep-alive pings on either side: compression would measure zlib on a compressible
payload, and pings would make the idle sockets not idle.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

T = TypeVar("T")
_BATCH = 50  # handshakes in flight at once while opening the idle sockets


def _run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _connect(url: str, headers: dict[str, str]) -> ClientConnection:
    return await connect(
        url,
        additional_headers=headers,
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=30,
    )


async def _throughput(
    url: str, headers: dict[str, str], seconds: float, frame: int
) -> tuple[int, int, float]:
    payload = os.urandom(frame)
    sent = 0
    async with await _connect(url, headers) as ws:
        await ws.send("reset")
        await ws.recv()
        started = time.perf_counter()
        until = started + seconds
        while time.perf_counter() < until:
            for _ in range(16):
                await ws.send(payload)
            sent += 16 * frame
        await ws.send("count")
        received = int(await ws.recv())
        return sent, received, time.perf_counter() - started


def throughput(
    url: str, headers: dict[str, str], seconds: float, frame: int
) -> tuple[int, int, float]:
    """Send binary messages of ``frame`` bytes over one socket for ``seconds``. Bytes
    sent, bytes the upstream counted, and the seconds from the first send until its
    count came back (so every byte went all the way through)."""
    return _run(_throughput(url, headers, seconds, frame))


async def _hold_idle(
    url: str, headers: dict[str, str], count: int, while_open: Callable[[], T]
) -> tuple[T, int]:
    sockets: list[ClientConnection] = []
    try:
        while len(sockets) < count:
            batch = min(_BATCH, count - len(sockets))
            opened = await asyncio.gather(
                *(_connect(url, headers) for _ in range(batch)), return_exceptions=True
            )
            sockets += [ws for ws in opened if isinstance(ws, ClientConnection)]
            failed = [e for e in opened if isinstance(e, BaseException)]
            if failed:
                raise RuntimeError(f"opening idle sockets: {len(failed)} failed: {failed[0]!r}")
        result = while_open()
        # Every socket still relays: a ping through the sidecar and its pong back.
        pongs = await asyncio.gather(*(ws.ping() for ws in sockets))
        await asyncio.wait_for(asyncio.gather(*pongs), 30)
        return result, len(sockets)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def hold_idle(
    url: str, headers: dict[str, str], count: int, while_open: Callable[[], T]
) -> tuple[T, int]:
    """Open ``count`` sockets, call ``while_open()`` while they all sit idle, check each
    one still answers a ping, close them. ``while_open``'s result and the sockets open."""
    return _run(_hold_idle(url, headers, count, while_open))
