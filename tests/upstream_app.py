"""The upstream the tests proxy to: a real HTTP server that records what it received.

Paths with special behaviour (everything else echoes):
- ``/slow?seconds=S``          answers after S seconds
- ``/hold?seconds=S``          answers after S seconds unless the connection goes away
                               first, which it counts in ``abandoned``
- ``/download?bytes=N``        streams N bytes of ``pattern(N)`` (in 64 KiB chunks)
- ``/gated-download?bytes=N``  sends the first chunk, then waits for ``release`` to be set
- ``/stream-forever``          streams until the client goes away; counts open streams
- ``/respond-headers?name=value&...``  answers with those response headers
- ``/truncate?bytes=N``        promises 2N bytes, sends N, and drops the connection
- ``/stall?bytes=N``           promises 2N bytes, sends N, then sends nothing more until
                               the connection goes away (counted in ``stalls_released``)
- ``/duplex``                  answers after the first body chunk, before reading the rest;
                               the body it sends ends with the sha256 of all it read

Requests whose body was cut off (the connection went away first) are counted in
``aborted``, never recorded in ``received``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import orjson

CHUNK = b"x" * 65536
# A period that is not a multiple of any chunk size, so a reordered, repeated or
# dropped chunk changes the hash.
_PERIOD = 1_048_583  # prime
_PATTERN = random.Random(3).randbytes(_PERIOD) * 2


def pattern(total: int, chunk: int = 65536) -> Iterator[bytes]:
    """``total`` deterministic bytes, ``chunk`` (at most 1 MiB) at a time."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        start = sent % _PERIOD
        yield _PATTERN[start : start + size]
        sent += size


@dataclass
class Received:
    method: str
    path: str
    raw_path: bytes
    query: str
    headers: list[tuple[str, str]]
    body_sha256: str
    body_bytes: int
    first_chunk_at: float | None
    completed_at: float

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


@dataclass
class RecordingUpstream:
    received: list[Received] = field(default_factory=list)
    open_streams: int = 0
    aborted: int = 0
    abandoned: int = 0
    stalls_released: int = 0
    first_chunk: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.received.clear()
        self.aborted = 0
        self.abandoned = 0
        self.stalls_released = 0
        self.first_chunk.clear()
        self.release.clear()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/duplex":
            await self._duplex(receive, send)
            return
        digest = hashlib.sha256()
        size = 0
        first_at = None
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.aborted += 1
                return
            chunk = message.get("body", b"")
            if chunk and first_at is None:
                first_at = time.monotonic()
                self.first_chunk.set()
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        query = scope["query_string"].decode("latin-1")
        record = Received(
            scope["method"], scope["path"], scope.get("raw_path") or b"", query, headers,
            digest.hexdigest(), size, first_at, time.monotonic(),
        )  # fmt: skip
        self.received.append(record)
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if scope["path"] == "/slow":
            await asyncio.sleep(float(params.get("seconds", "1")))
        if scope["path"] == "/hold":
            try:
                async with asyncio.timeout(float(params.get("seconds", "1"))):
                    while (await receive())["type"] != "http.disconnect":
                        pass
                self.abandoned += 1
                return
            except TimeoutError:
                pass
        if scope["path"] == "/download":
            await self._download(send, int(params["bytes"]))
            return
        if scope["path"] == "/gated-download":
            await self._gated(send, int(params["bytes"]))
            return
        if scope["path"] == "/stream-forever":
            await self._forever(receive, send)
            return
        if scope["path"] == "/truncate":
            size = int(params["bytes"])
            headers = [(b"content-length", str(2 * size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"t" * size, "more_body": True})
            raise ConnectionAbortedError("upstream gave up mid-body (on purpose)")
        if scope["path"] == "/stall":
            size = int(params["bytes"])
            headers = [(b"content-length", str(2 * size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"s" * size, "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.stalls_released += 1
            return
        if scope["path"] == "/respond-headers":
            pairs = [(k.encode(), v.encode()) for k, v in parse_qsl(query)]
            await send({"type": "http.response.start", "status": 200, "headers": pairs})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = orjson.dumps(
            {"method": record.method, "path": record.path, "query": query,
             "headers": dict(headers), "body_sha256": record.body_sha256,
             "body_bytes": size}
        )  # fmt: skip
        await send(
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"x-upstream", b"yes"), (b"connection", b"keep-alive")]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def _download(self, send: Any, total: int) -> None:
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"content-length", str(total).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        for piece in pattern(total):
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < total})
        if total == 0:
            await send({"type": "http.response.body", "body": b""})

    async def _gated(self, send: Any, total: int) -> None:
        headers = [(b"content-length", str(total).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pieces = pattern(total)
        first = next(pieces)
        await send({"type": "http.response.body", "body": first, "more_body": True})
        released = await asyncio.to_thread(self.release.wait, 10)
        rest = b"".join(pieces) if released else b""
        await send({"type": "http.response.body", "body": rest, "more_body": False})

    async def _duplex(self, receive: Any, send: Any) -> None:
        digest = hashlib.sha256()
        message = await receive()
        digest.update(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"reading;", "more_body": True})
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                self.aborted += 1
                return
            digest.update(message.get("body", b""))
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})

    async def _forever(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.open_streams += 1
        gone = asyncio.ensure_future(receive())  # the next message can only be a disconnect
        try:
            while not gone.done():
                await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
                await asyncio.sleep(0.01)
        finally:
            gone.cancel()
            self.open_streams -= 1
