"""Logging set-up: structured JSON error lines, and the redaction that keeps secrets out
of every line (the access log, accesslog.py, uses the same ``redact``).

``RedactingFilter`` sits on the one handler every logger writes through, so it sees
every record: messages, their arguments, exception tracebacks, stack traces and the
access-log fields (a client controls the path and the request id, and may paste a
key into either).
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

import orjson

from sidecar.core.domain import PREFIX_LENGTH
from sidecar.core.timeutil import iso_millis

# Any sk_ token longer than a key prefix (sk_<env>_ + 6), and anything shaped like a
# JWT: base64url JSON header ('{' encodes as "ey" or "ew"), payload, signature.
_SECRET_PATTERNS = re.compile(
    r"sk_[A-Za-z0-9]+_[A-Za-z0-9]{7,}"
    r"|e[wy][A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
)


AUDIT_LOGGER = "sidecar.audit"  # its records carry an audit event as ``fields``


def redact(text: str) -> str:
    """Replace every full key and JWT in ``text``; a key keeps its public prefix."""
    return _SECRET_PATTERNS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    value = match.group(0)
    if value.startswith("sk_"):
        return value[:PREFIX_LENGTH] + "…[redacted]"
    return "[redacted-jwt]"


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so that no formatter can see a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
            return True
        record.msg = redact(_message(record))
        record.args = None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = text
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        context = getattr(record, "context", None)
        if isinstance(context, dict):
            record.context = {k: redact(str(v)) for k, v in context.items()}
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # bad %-arguments: keep what we can, redacted below
        return f"{record.msg} {record.args!r}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            return orjson.dumps(fields).decode()
        entry: dict[str, Any] = {
            "time": iso_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        context = getattr(record, "context", None)
        if isinstance(context, dict):
            entry.update(context)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry).decode()


# Set in the tasks of the helper servers (the admin and forward-auth listeners, the
# example upstream): their uvicorn start-up lines would repeat the public server's
# "Started server process" and announce the example upstream's port as if it were the
# sidecar's. The sidecar's own "listening" line says where everything is.
QUIET_UVICORN: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet_uvicorn", default=False)


class _QuietHelpers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not QUIET_UVICORN.get()


def configure(level: str) -> None:
    """Route every logger (ours, uvicorn's, asyncio's, warnings) through one redacting
    JSON handler on stderr. The access log (``AccessLog``) does not use logging."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Audit events are a record, not chatter: written whatever logging.level says.
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").filters[:] = [_QuietHelpers()]
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)


def audit_lines_to_stderr() -> None:
    """For the CLI, which configures no logging: the audit events of the changes it
    makes still go out as redacted JSON lines (``"log": "audit"``) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.handlers[:] = [handler]
    audit.setLevel(logging.INFO)
    audit.propagate = False
