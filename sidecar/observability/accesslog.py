"""The access log: one JSON line per request, redacted (the client controls the path
and the request id, and may paste a key into either)."""

from __future__ import annotations

import asyncio
import os
import select
import time
from typing import Any

import orjson

from sidecar.core.timeutil import iso_millis
from sidecar.observability.logs import redact
from sidecar.observability.record import RequestRecord


def _clean(value: str) -> str:
    """``redact`` for client-controlled fields, skipped when no secret can be inside."""
    return redact(value) if "sk_" in value or "." in value else value


def _millis(seconds: float) -> float:
    """Milliseconds to the microsecond: what ``round(ms, 3)`` gives, at a quarter of its
    cost (an integer over 1000 prints with at most 3 decimals)."""
    return int(seconds * 1e6 + 0.5) / 1000


class AccessLog:
    """One JSON line per request, written straight to a file descriptor (stderr, like
    every other log line) in batches rather than through ``logging``.

    Cheaper per request than a logging record, a lock and a write() (the figures are in
    docs/design-notes.md). Lines wait at most ``FLUSH_SECONDS`` (or until ``BATCH_LINES``
    are queued) and go out in whole-line writes of at most PIPE_BUF bytes, so several
    workers writing to one pipe never interleave inside a line. The client controls the
    path; it is redacted here.
    """

    FLUSH_SECONDS = 0.2
    BATCH_LINES = 256

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self._lines: list[bytes] = []
        self._pid = os.getpid()

    def write(self, record: RequestRecord) -> None:
        fields: dict[str, Any] = {
            "time": iso_millis(time.time()),
            "request_id": _clean(record.request_id),
            "method": record.method,
            "path": _clean(record.path),
            "route": record.route,
            "status": record.status,
            "duration_ms": _millis(record.duration),
            "upstream_ms": None
            if record.upstream_seconds is None
            else _millis(record.upstream_seconds),
            "auth_method": record.auth_method,
            "auth_outcome": record.auth_outcome,
            "user_id": record.user_id,
            "key_prefix": record.key_prefix,
            "would_deny": record.would_deny,
            "client": record.client,
            "bytes_in": record.bytes_in,
            "bytes_out": record.bytes_out,
            "pid": self._pid,
        }
        trace = record.trace
        if trace is not None:  # a sampled request
            fields["trace_id"] = trace.trace_id
            fields["span_id"] = trace.span_id
        self._lines.append(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._lines) >= self.BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > select.PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.FLUSH_SECONDS)
                self.flush()
        finally:
            self.flush()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                return  # stderr gone: nothing sensible left to do with an access line
