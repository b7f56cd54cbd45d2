"""JSON logs and redaction: no full API key or JWT reaches a log line.

The whole suite is also scanned at the end (conftest.pytest_sessionfinish) for every
key and token the tests created.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.keys import format as keyformat
from sidecar.observability import accesslog
from sidecar.observability import logs as logsetup
from sidecar.observability.logs import JsonFormatter, RedactingFilter, redact
from tests.conftest import Api, make_token
from tests.harness import SidecarProcess, leaked_secrets, remember_secret, wait_until

KEY = remember_secret(keyformat.generate())
TOKEN = make_token("log-user")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key={KEY}", f"key={KEY[:14]}…[redacted]"),
        (f"X-API-Key: {KEY}, {KEY}", f"X-API-Key: {KEY[:14]}…[redacted], {KEY[:14]}…[redacted]"),
        (f"Bearer {TOKEN}", "Bearer [redacted-jwt]"),
        (f"/path/{KEY}/x", f"/path/{KEY[:14]}…[redacted]/x"),
        (f"(b'x-api-key', b'{KEY}')", f"(b'x-api-key', b'{KEY[:14]}…[redacted]')"),
        (KEY[:14], KEY[:14]),  # a prefix is public
        ("sk_test_" + "a" * 40, "sk_test_aaaaaa…[redacted]"),
        ("sidecar.access.log", "sidecar.access.log"),
        ("plain text", "plain text"),
    ],
)  # fmt: skip
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_jwt_with_any_json_header_is_redacted() -> None:
    import base64

    header = base64.urlsafe_b64encode(b'{ "alg": "HS256" }').rstrip(b"=").decode()
    token = f"{header}.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert redact(f"token {token} end") == "token [redacted-jwt] end"


def _format(record: logging.LogRecord) -> dict[str, Any]:
    assert RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    assert KEY not in line and TOKEN not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def _record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad credential {KEY} / {TOKEN}")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("sidecar.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_secrets_in_arguments_exceptions_and_context_are_redacted() -> None:
    entry = _format(
        _record("failed for %s with %r", KEY, {"authorization": f"Bearer {TOKEN}"}, exc=True,
                context={"header": KEY})
    )  # fmt: skip
    assert entry["message"] == (
        f"failed for {KEY[:14]}…[redacted] with {{'authorization': 'Bearer [redacted-jwt]'}}"
    )
    assert "ValueError: bad credential" in entry["exception"]
    assert f"{KEY[:14]}…[redacted] / [redacted-jwt]" in entry["exception"]
    assert entry["header"] == f"{KEY[:14]}…[redacted]"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "sidecar.test"
    assert isinstance(entry["pid"], int)


def test_access_fields_are_redacted() -> None:
    fields = {"path": f"/v1/{KEY}", "request_id": KEY, "status": 200, "key_prefix": KEY[:14]}
    entry = _format(_record("access", fields=fields))
    assert entry == {
        "path": f"/v1/{KEY[:14]}…[redacted]",
        "request_id": f"{KEY[:14]}…[redacted]",
        "status": 200,
        "key_prefix": KEY[:14],
    }


def test_a_message_with_broken_arguments_is_still_redacted() -> None:
    entry = _format(_record("two %s %s", KEY))
    assert KEY[:14] in entry["message"]


@pytest.fixture
def configured() -> Iterator[io.StringIO]:
    """logsetup.configure() on the real root logger, writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logsetup.configure("INFO")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def test_every_logger_goes_through_redaction(configured: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").error("Exception in ASGI application %s", KEY)
    logging.getLogger("aiohttp.client").warning("header %s", TOKEN)
    import warnings

    warnings.warn(f"careless {KEY}", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in configured.getvalue().splitlines()]
    assert [e["logger"] for e in lines] == ["uvicorn.error", "aiohttp.client", "py.warnings"]
    text = configured.getvalue()
    assert KEY not in text and TOKEN not in text
    assert text.count(KEY[:14] + "…[redacted]") == 2


def test_the_access_log_writes_whole_redacted_lines_in_batches(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    log = accesslog.AccessLog(fd)
    for index in range(300):  # more than one batch and more than PIPE_BUF bytes
        record = _request_record()
        record.request_id = f"rid-{index}"
        record.path = f"/api/v1/analysis/{KEY}"
        log.write(record)
    log.flush()
    os.close(fd)
    text = target.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["request_id"] for e in entries] == [f"rid-{i}" for i in range(300)]
    assert KEY not in text
    assert entries[0]["path"] == f"/api/v1/analysis/{KEY[:14]}…[redacted]"
    assert entries[0]["time"].endswith("Z") and entries[0]["pid"] == os.getpid()


def _request_record() -> Any:
    from sidecar.observability.record import RequestRecord

    return RequestRecord("GET", "/x", "proxy", "rid-1", "127.0.0.1", 0.0, status=200)


# --- the real process --------------------------------------------------------------

ACCESS_FIELDS = {
    "time", "request_id", "method", "path", "route", "status", "duration_ms", "upstream_ms",
    "auth_method", "auth_outcome", "user_id", "key_prefix", "would_deny", "client", "bytes_in",
    "bytes_out", "pid",
}  # fmt: skip


def access_lines(sidecar: SidecarProcess, request_id: str) -> list[dict[str, Any]]:
    found = []
    for line in sidecar.logs().splitlines():
        if line.startswith("{") and request_id in line:
            entry = json.loads(line)
            if entry.get("request_id") == request_id:
                found.append(entry)
    return found


def test_one_access_line_per_request_with_every_field(
    api: Api, sidecar: SidecarProcess, user: str
) -> None:
    key = api.create_key(user)
    rid = f"log-{uuid.uuid4().hex}"
    response = api.http.post(  # the upstream answers after 5 ms, so upstream_ms > 0
        "/x/../slow?seconds=0.005",
        content=b"12345",
        headers={"X-API-Key": key["api_key"], "X-Request-ID": rid},
    )
    assert response.status_code == 200
    wait_until(lambda: access_lines(sidecar, rid) != [], timeout=5)
    [entry] = access_lines(sidecar, rid)
    assert set(entry) == ACCESS_FIELDS
    assert entry["method"] == "POST"
    assert entry["path"] == "/slow"  # normalised, without the query
    assert entry["route"] == "proxy"
    assert entry["status"] == 200
    assert entry["auth_method"] == "api_key"
    assert entry["auth_outcome"] == "ok"
    assert entry["user_id"] == user
    assert entry["key_prefix"] == key["key_prefix"]
    assert entry["client"] == "127.0.0.1"
    assert entry["bytes_in"] == 5
    assert entry["bytes_out"] == len(response.content)
    assert entry["duration_ms"] >= entry["upstream_ms"] >= 4
    assert entry["time"].endswith("Z")


def test_a_key_the_client_puts_in_the_path_is_not_logged(
    api: Api, sidecar: SidecarProcess, user: str
) -> None:
    key = api.create_key(user)
    rid = f"log-{uuid.uuid4().hex}"
    response = api.http.get(
        f"/api/v1/analysis/{key['api_key']}",
        headers={"X-API-Key": key["api_key"] + "x", "X-Request-ID": rid},
    )
    assert response.status_code == 401
    wait_until(lambda: access_lines(sidecar, rid) != [], timeout=5)
    [entry] = access_lines(sidecar, rid)
    assert entry["path"] == f"/api/v1/analysis/{key['key_prefix']}…[redacted]"
    assert entry["auth_outcome"] == "malformed"
    assert key["api_key"] not in sidecar.logs()


def test_the_log_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """The session-end scan really fails on a leak (what it runs on the real logs)."""
    planted = keyformat.generate()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.log").write_text(f'{{"message": "oops {planted[:20]}"}}\n')
    assert leaked_secrets(tmp_path, {planted}) == []  # a fragment is not the secret
    (tmp_path / "sub" / "x.log").write_text(f'{{"message": "oops {planted}"}}\n')
    assert leaked_secrets(tmp_path, {planted}) == [
        f"{tmp_path / 'sub' / 'x.log'}: {planted[:14]}… (a secret a test created)"
    ]
    unrecorded = keyformat.generate()
    (tmp_path / "y.log").write_text(f"{unrecorded} and {make_token('someone')}")
    found = leaked_secrets(tmp_path, set())
    assert len(found) == 3
    assert f"{tmp_path / 'y.log'}: {unrecorded[:14]}… (shaped like a full key or JWT)" in found


def test_a_rejected_well_formed_key_is_logged_by_its_prefix_only(
    api: Api, sidecar: SidecarProcess, user: str
) -> None:
    key = api.create_key(user)
    api.http.delete(f"/api/v1/api-keys/{key['id']}", headers=api.bearer(user))
    rid = f"log-{uuid.uuid4().hex}"
    response = api.http.get(
        "/api/v1/analysis/",
        headers={"Authorization": f"Bearer {key['api_key']}", "X-Request-ID": rid},
    )
    assert response.status_code == 401
    wait_until(lambda: access_lines(sidecar, rid) != [], timeout=5)
    [entry] = access_lines(sidecar, rid)
    assert entry["auth_outcome"] == "revoked"
    assert entry["key_prefix"] == key["key_prefix"]
    assert entry["user_id"] is None
