"""Reading a request body from ASGI ``receive``, counted and capped: the one reader
the proxy, the key API and the secret-scanning endpoint share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from sidecar.core.errors import ClientGone, PayloadTooLarge

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class Tally(Protocol):
    """Where the bytes read are counted (the proxy's exchange, for its access log)."""

    bytes_in: int


class Counted:
    """A tally of its own, for a caller that only needs the cap."""

    __slots__ = ("bytes_in",)

    def __init__(self) -> None:
        self.bytes_in = 0


async def body_chunks(receive: Receive, limit: int, tally: Tally) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, counted in ``tally`` and capped at ``limit``
    (PayloadTooLarge); ClientGone when the client disconnects first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        data = message.get("body", b"")
        if data:
            tally.bytes_in += len(data)
            if tally.bytes_in > limit:
                raise PayloadTooLarge(limit)
            yield data
        if not message.get("more_body", False):
            return


async def read_body(receive: Receive, limit: int, tally: Tally | None = None) -> bytes:
    """The whole request body, capped at ``limit``."""
    parts = [data async for data in body_chunks(receive, limit, tally or Counted())]
    return parts[0] if len(parts) == 1 else b"".join(parts)
