"""A component's write-behind loop: flush what it gathered every ``interval`` seconds,
and once more when the loop is cancelled at shutdown (shielded, so that last batch is
written even though the task is being cancelled)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def flush_every(
    interval: float, flush: Callable[[], Awaitable[None]], pending: Callable[[], bool]
) -> None:
    """Run until cancelled; ``pending`` says whether anything is left to flush."""
    try:
        while True:
            await asyncio.sleep(interval)
            await flush()
    finally:
        if pending():
            await asyncio.shield(flush())
