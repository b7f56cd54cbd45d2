"""One JSON line per request, and the redaction that keeps secrets out of every log line."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

from sidecar.observe import RequestRecord

access = logging.getLogger("sidecar.access")

# Full API keys (any sk_ token) and anything shaped like a JWT.
_SECRET_PATTERNS = re.compile(
    r"sk_[A-Za-z0-9]+_[A-Za-z0-9]{6,}"
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)


def redact(text: str) -> str:
    """Replace every full key and JWT in ``text``; a key keeps its 14-char prefix."""
    return _SECRET_PATTERNS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    value = match.group(0)
    if value.startswith("sk_"):
        return value[:14] + "…[redacted]"
    return "[redacted-jwt]"


class RedactingFilter(logging.Filter):
    """Attached to every handler: a secret cannot reach output even inside an
    exception message or a logged header."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            formatter = logging.Formatter()
            message += "\n" + formatter.formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            return orjson.dumps(fields).decode()
        entry = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        return orjson.dumps(entry).decode()


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def log_request(record: RequestRecord) -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "time": _iso(time.time()),
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "upstream_ms": None
        if record.upstream_seconds is None
        else round(record.upstream_seconds * 1000, 3),
        "auth_method": record.auth_method,
        "auth_outcome": record.auth_outcome,
        "user_id": record.user_id,
        "key_prefix": record.key_prefix,
        "client": record.client,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
    }
    access.info("access", extra={"fields": fields})


def _iso(moment: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"
    )
