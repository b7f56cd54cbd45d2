"""A bound on concurrent holders: ``asyncio.Semaphore`` without its cost when a slot is
free, which on the proxy's hot path it always is (pool_size 256 against ~32 requests in
flight).

``Semaphore.acquire`` is a coroutine, and ``locked()`` scans the waiters; taking and
giving back a slot here is two attribute updates, and only a request that has to
wait builds a coroutine (docs/design-notes.md, "Slots and the protocol's one write").
Waiters are served first come, first served; a freed slot is handed straight to the
next one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib


class Slots:
    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one slot")
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def free(self) -> int:
        return self._free

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot: ``if not slots.try_take(): await slots.take()``."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot as the cancellation came: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the longest waiter, else to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
