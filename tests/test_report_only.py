"""Report-only mode (SPEC Part 2): would-be refusals are forwarded, marked, logged and
counted; nothing is refused with 401 or 429 where it applies. Real sidecar processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidecar.keys import format as keyformat
from tests.conftest import Api, make_token
from tests.harness import SidecarProcess, free_port, remember_secret, wait_until
from tests.test_logs import access_lines
from tests.upstream_app import RecordingUpstream

BUDGET = 2
SPOOFED = {
    "X-CallCov-User-Id": "admin",
    "x-callcov-auth-method": "jwt",
    "X_CallCov_Key_Id": "k",
    "X-CallCov-Auth-Would-Deny": "0",
    "X-CallCov-Identity": "forged",
}


@pytest.fixture(scope="module")
def trial(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """Enforcing, except under /api/v1/trial/; a tiny rate-limit budget."""
    config = config_for(
        auth={"report_only_paths": ["/api/v1/trial/"]},
        rate_limits={"enabled": True, "default": {"requests": BUDGET, "per_seconds": 60}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("report")).start()
    yield process
    process.stop()


def rid() -> str:
    return uuid.uuid4().hex


def last(recorder: RecordingUpstream, request_id: str) -> Any:
    found = [r for r in recorder.received if r.header("x-request-id") == request_id]
    assert len(found) == 1
    return found[0]


def report_only_total(sidecar: SidecarProcess) -> dict[str, float]:
    text = httpx.get(sidecar.admin_url + "/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith("sidecar_report_only_total{"):
            labels, _, value = line.rpartition(" ")
            counts[labels.split('"')[1]] = float(value)
    return counts


@pytest.mark.parametrize(
    ("credential", "would"),
    [
        ({}, "401"),
        ({"X-API-Key": remember_secret(keyformat.generate())}, "401"),  # well-formed, unknown
        ({"Authorization": "Bearer not-a-jwt"}, "401"),
        ({"Authorization": f"Bearer {make_token('u', ttl=-60)}"}, "401"),  # expired
    ],
)
def test_a_would_be_401_is_forwarded_marked_and_without_identity(
    trial: SidecarProcess, recorder: RecordingUpstream, credential: dict[str, str], would: str
) -> None:
    request_id = rid()
    before = report_only_total(trial).get(would, 0)
    response = httpx.get(
        trial.url + "/api/v1/trial/run",
        headers={**SPOOFED, **credential, "X-Request-ID": request_id},
    )
    assert response.status_code == 200
    seen = last(recorder, request_id)
    assert seen.header("x-callcov-auth-would-deny") == would
    for name in ("x-callcov-user-id", "x-callcov-auth-method", "x-callcov-key-id"):
        assert seen.header(name) is None
    assert seen.header("x-callcov-identity") is None
    assert seen.header("x-api-key") is None
    wait_until(lambda: access_lines(trial, request_id) != [], timeout=5)
    [entry] = access_lines(trial, request_id)
    assert entry["would_deny"] == int(would)
    assert entry["status"] == 200
    assert report_only_total(trial)[would] == before + 1


def test_a_would_be_429_is_forwarded_and_charges_nothing(
    trial: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    headers = {"Authorization": f"Bearer {make_token(user)}"}
    statuses = []
    marks = []
    for _ in range(BUDGET + 3):
        request_id = rid()
        response = httpx.get(
            trial.url + "/api/v1/trial/x", headers={**headers, "X-Request-ID": request_id}
        )
        statuses.append(response.status_code)
        seen = last(recorder, request_id)
        marks.append(seen.header("x-callcov-auth-would-deny"))
        if marks[-1] is None:
            assert seen.header("x-callcov-user-id") == user
        else:
            assert seen.header("x-callcov-user-id") is None
    assert statuses == [200] * (BUDGET + 3)
    assert marks == [None] * BUDGET + ["429"] * 3
    # outside the report-only prefix the same user is refused as usual
    assert httpx.get(trial.url + "/api/v1/other", headers=headers).status_code == 429


def test_an_authenticated_request_is_forwarded_exactly_as_in_enforce_mode(
    trial: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    key = Api(trial.url).create_key(user)
    request_id = rid()
    response = httpx.get(
        trial.url + "/api/v1/trial/ok",
        headers={**SPOOFED, "X-API-Key": key["api_key"], "X-Request-ID": request_id},
    )
    assert response.status_code == 200
    seen = last(recorder, request_id)
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-key-id") == key["id"]
    assert seen.header("x-callcov-auth-would-deny") is None
    wait_until(lambda: access_lines(trial, request_id) != [], timeout=5)
    assert access_lines(trial, request_id)[0]["would_deny"] is None


def test_outside_the_prefix_refusals_are_enforced(
    trial: SidecarProcess, recorder: RecordingUpstream
) -> None:
    response = httpx.get(trial.url + "/api/v1/trialx", headers={"X-Request-ID": rid()})
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert recorder.received == []


def test_global_report_mode_never_refuses_but_the_key_endpoints_enforce(
    spawn: Any, config_for: Any, recorder: RecordingUpstream
) -> None:
    # Redis is unreachable: an API key cannot be verified (503 in enforce mode)
    config = config_for(auth={"mode": "report"})
    config["redis"] = {"url": f"redis://127.0.0.1:{free_port()}/0", "socket_timeout_seconds": 0.3}
    sidecar = spawn(config)
    cases = {
        "503": {"X-API-Key": remember_secret(keyformat.generate())},
        "401": {"Authorization": "Bearer sk_live_short"},
    }
    for would, credential in cases.items():
        request_id = rid()
        response = httpx.post(
            sidecar.url + "/api/v1/analysis/",
            headers={**credential, "X-Request-ID": request_id},
            content=b"{}",
        )
        assert response.status_code == 200
        assert last(recorder, request_id).header("x-callcov-auth-would-deny") == would
    assert report_only_total(sidecar) == {"503": 1.0, "401": 1.0}
    for path in ("/api/v1/api-keys/", "/api/v1/api-keys"):
        refused = httpx.get(sidecar.url + path)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
