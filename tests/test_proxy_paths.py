"""Public paths and path tricks: requests are sent with http.client, which puts the
request target on the wire byte for byte (httpx would resolve ``..`` itself)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from tests.conftest import Api
from tests.harness import SidecarProcess
from tests.upstream_app import RecordingUpstream

UNAUTHORIZED = {"detail": "Could not validate credentials"}


def raw_request(
    sidecar: SidecarProcess,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    port = sidecar.config["server"]["port"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


# Each of these, resolved, leaves the public prefix /api/v1/auth/ (or never was in it).
TRICKS = [
    "/api/v1/auth/../analysis/",
    "/api/v1/auth/./../analysis/",
    "/api/v1/auth/%2e%2e/analysis/",
    "/api/v1/auth/%2E%2E/analysis/",
    "/api/v1/auth/.%2e/analysis/",
    "/api/v1/auth/%2e./analysis/",
    "/api/v1/auth%2f..%2fanalysis/",
    "/api/v1/auth/..%2Fanalysis/",
    "/api/v1/auth/..\\analysis/",
    "/api/v1/auth\\..\\analysis/",
    "/api/v1/auth/..%5canalysis/",
    "/api/v1/auth/..%5Canalysis/",
    "//api/v1/auth/../analysis/",
    "/api/v1//auth/../analysis/",
    "/api/v1/auth//../analysis/",
    "/api/v1/auth/../../v1/analysis/",
    "/api/v1/Auth/../analysis/",
    "/API/V1/ANALYSIS/",
    "/api/v1/authx/",
    "/api/v1/auth/../analysis/?next=/api/v1/auth/",
    "/api/v1/analysis/?/api/v1/auth/",
    "/api/v1/analysis/;/api/v1/auth/",
    "/api/v1/analysis/#/api/v1/auth/",
    "http://127.0.0.1/api/v1/auth/../analysis/",  # absolute form
    "//evil/api/v1/auth/x",  # a path, never a host: urlsplit would read "/api/v1/auth/x"
]


@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_do_not_bypass_auth(
    sidecar: SidecarProcess, recorder: RecordingUpstream, target: str
) -> None:
    status, headers, body = raw_request(sidecar, target, "POST", body=b"payload")
    assert status == 401, (target, body)
    assert json.loads(body) == UNAUTHORIZED
    assert headers["www-authenticate"] == "Bearer"
    assert recorder.received == [] and recorder.aborted == 0


# target, the path the upstream gets (and a decision is made on), its raw form
FORWARDED = [
    ("/api/v1/auth/../analysis/x", "/api/v1/analysis/x", b"/api/v1/analysis/x"),
    ("/api/v1/auth/%2e%2e/analysis/x", "/api/v1/analysis/x", b"/api/v1/analysis/x"),
    ("//api/v1//analysis/x", "/api/v1/analysis/x", b"/api/v1/analysis/x"),
    ("/api/v1/analysis/a%2Fb", "/api/v1/analysis/a/b", b"/api/v1/analysis/a/b"),
    ("/api/v1/analysis/a%20b%3F", "/api/v1/analysis/a b?", b"/api/v1/analysis/a%20b%3F"),
    ("/API/V1/Analysis/X", "/API/V1/Analysis/X", b"/API/V1/Analysis/X"),
]
FORWARDED_PATHS = [(target, path) for target, path, _ in FORWARDED]


@pytest.mark.parametrize(("target", "upstream_path", "upstream_raw_path"), FORWARDED)
def test_the_upstream_sees_the_path_auth_decided_on(
    api: Api,
    user: str,
    sidecar: SidecarProcess,
    recorder: RecordingUpstream,
    target: str,
    upstream_path: str,
    upstream_raw_path: bytes,
) -> None:
    key = api.create_key(user)["api_key"]
    status, _, body = raw_request(sidecar, target + "?q=%2e%2e/x", headers={"X-API-Key": key})
    assert status == 200, body
    seen = recorder.received[-1]
    assert (seen.path, seen.raw_path, seen.query) == (
        upstream_path,
        upstream_raw_path,
        "q=%2e%2e/x",
    )


PUBLIC = [
    ("/api/v1/auth/login", "/api/v1/auth/login"),
    ("/api/v1/auth/", "/api/v1/auth/"),
    ("/api/v1/auth", "/api/v1/auth"),
    ("/api/v1/auth/./refresh", "/api/v1/auth/refresh"),
    ("/api/v1//auth/x/../login", "/api/v1/auth/login"),
    ("/api/v1/analysis/../auth/login", "/api/v1/auth/login"),
    # "..;" and "%252e" are refused as ambiguous: see AMBIGUOUS below.
]


@pytest.mark.parametrize(("target", "upstream_path"), PUBLIC)
def test_public_paths_are_forwarded_without_credentials(
    sidecar: SidecarProcess, recorder: RecordingUpstream, target: str, upstream_path: str
) -> None:
    status, headers, body = raw_request(
        sidecar, target + "?next=%2F", "POST", {"Content-Type": "application/json"}, b'{"u":1}'
    )
    assert status == 200, body
    seen = recorder.received[-1]
    assert (seen.method, seen.path, seen.query) == ("POST", upstream_path, "next=%2F")
    assert seen.body_bytes == 7
    assert seen.header("x-callcov-user-id") is None
    assert seen.header("x-callcov-auth-method") is None
    assert headers["x-upstream"] == "yes"


def test_public_paths_pass_a_jwt_through_without_checking_it(
    sidecar: SidecarProcess, recorder: RecordingUpstream
) -> None:
    status, _, _ = raw_request(
        sidecar, "/api/v1/auth/refresh", headers={"Authorization": "Bearer eyJ.not.checked"}
    )
    assert status == 200
    seen = recorder.received[-1]
    assert seen.header("authorization") == "Bearer eyJ.not.checked"
    assert seen.header("x-callcov-auth-method") is None


KEY_ENDPOINTS = [
    "/api/v1/auth/../api-keys/",
    "/api/v1/auth/%2e%2e/api-keys",
    "//api/v1/api-keys/",
    "/API/V1/API-KEYS/",
    "/api/v1/api-keys/./",
]


@pytest.mark.parametrize("target", KEY_ENDPOINTS)
def test_key_endpoints_are_never_proxied_however_spelled(
    sidecar: SidecarProcess, api: Api, user: str, recorder: RecordingUpstream, target: str
) -> None:
    status, _, body = raw_request(sidecar, target, headers=api.bearer(user))
    assert status == 200, body
    listed: dict[str, Any] = json.loads(body)
    assert listed == {"api_keys": [], "total": 0}
    status, _, body = raw_request(sidecar, target)
    assert status == 401
    assert recorder.received == []


# Paths an upstream might route differently from the sidecar's reading of them.
AMBIGUOUS = [
    "/api/v1/auth/..;/analysis/",
    "/api/v1/auth/..;jsessionid=x/analysis/",
    "/api/v1/auth/.;/x",
    "/api/v1/auth/%2e%2e;/analysis/",
    "/api/v1/auth/%252e%252e/analysis/",
    "/api/v1/auth/%252E%252E%252Fanalysis/",
    "/api/v1/auth/..%252fanalysis/",
    "/api/v1/auth/..%255canalysis/",
    "/api/v1/auth/%c0%ae%c0%ae/analysis/",  # overlong UTF-8 dots
    "/api/v1/auth/%e0%80%ae%e0%80%ae/analysis/",
    "/api/v1/auth/%ff/x",  # not UTF-8 at all
    "/api/v1/auth/%ef%bc%8e%ef%bc%8e/analysis/",  # fullwidth dots: NFKC makes them ".."
    "/api/v1/auth/%ef%bc%8f..%ef%bc%8fanalysis/",  # fullwidth solidus
]


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_ambiguous_paths_are_refused_before_any_matching(
    sidecar: SidecarProcess, recorder: RecordingUpstream, target: str
) -> None:
    status, headers, body = raw_request(sidecar, target)
    assert status == 400, body
    assert json.loads(body) == {"detail": "Ambiguous request path"}
    assert headers["content-type"] == "application/json"
    assert recorder.received == []


UNAMBIGUOUS = [
    "/api/v1/auth/login;v=1",
    "/api/v1/auth/caf%C3%A9",
    "/api/v1/auth/%E2%82%AC",
    "/api/v1/auth/a%2520b",
]


@pytest.mark.parametrize("target", UNAMBIGUOUS)
def test_unambiguous_paths_with_escapes_and_parameters_still_pass(
    sidecar: SidecarProcess, recorder: RecordingUpstream, target: str
) -> None:
    status, _, _ = raw_request(sidecar, target)
    assert status == 200
    assert len(recorder.received) == 1


def test_the_ambiguous_path_refusal_can_be_switched_off(
    spawn: Any, config_for: Any, recorder: RecordingUpstream
) -> None:
    sidecar = spawn(config_for(server={"reject_ambiguous_paths": False}))
    status, _, _ = raw_request(sidecar, "/api/v1/auth/..;/analysis/")
    assert status == 200  # public as the sidecar reads it; the upstream's reading is its own
    assert len(recorder.received) == 1
