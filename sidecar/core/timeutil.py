"""Timestamps: ISO 8601, UTC, ``Z`` suffix. The API shows microseconds, logs
milliseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%S"
# The last whole second formatted: log lines come many per second, strftime is slow.
_last_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    return to_iso(datetime.now(UTC))


def to_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(f"{_SECONDS_FORMAT}.%fZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso_millis(moment: float) -> str:
    """``moment`` (epoch seconds) to the millisecond, for log lines."""
    global _last_second
    second = int(moment)
    cached = _last_second
    if cached[0] != second:
        cached = (second, time.strftime(_SECONDS_FORMAT, time.gmtime(second)))
        _last_second = cached  # one tuple assignment: safe if a thread logs meanwhile
    return f"{cached[1]}.{int(moment % 1 * 1000):03d}Z"


def utc_day(epoch_seconds: float) -> str:
    """The UTC calendar day of a moment, as ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(epoch_seconds, UTC).date().isoformat()
