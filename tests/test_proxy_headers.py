"""What crosses the proxy: identity injection and anti-spoofing, credentials, hop-by-hop
headers, X-Forwarded-*, X-Request-ID, and everything end-to-end preserved."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Api, make_token
from tests.harness import SidecarProcess
from tests.upstream_app import RecordingUpstream

PATH = "/api/v1/analysis/"
PUBLIC = "/api/v1/auth/login"
IDENTITY = (
    "x-callcov-user-id", "x-callcov-auth-method", "x-callcov-key-id", "x-callcov-key-environment",
)  # fmt: skip
FORGED_SPELLINGS = [
    "X-CallCov-User-Id", "x-callcov-user-id", "X-CALLCOV-USER-ID", "X_CallCov_User_Id",
    "x-callcov_user-id", "X-CallCov-Auth-Method", "X_CALLCOV_AUTH_METHOD",
    "X-CallCov-Key-Id", "x_callcov_key_id",
    "X-CallCov-Key-Environment", "x_callcov_key_environment",
]  # fmt: skip


@pytest.fixture(scope="module")
def tuned(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """A sidecar behind a trusted proxy (loopback) that keeps JWTs to itself."""
    config = config_for(
        server={"trusted_proxies": ["127.0.0.1/32"]},
        upstream={"forward_authorization": False},
        identity={"headers": {"user_id": "X-Caller", "auth_method": "X-Caller-Via"}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("tuned")).start()
    yield process
    process.stop()


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def identity_headers_seen(recorder: RecordingUpstream) -> list[tuple[str, str]]:
    seen = recorder.received[-1]
    return [(k, v) for k, v in seen.headers if canonical(k) in IDENTITY]


@pytest.mark.parametrize("credential", ["api_key", "jwt", "public"])
def test_forged_identity_headers_never_reach_the_upstream(
    api: Api, user: str, recorder: RecordingUpstream, credential: str
) -> None:
    headers: list[tuple[str, str]] = [(name, "admin") for name in FORGED_SPELLINGS]
    path = PATH
    expected: list[tuple[str, str]] = []
    if credential == "api_key":
        key = api.create_key(user)
        headers.append(("X-API-Key", key["api_key"]))
        expected = [
            ("x-callcov-user-id", user),
            ("x-callcov-auth-method", "api_key"),
            ("x-callcov-key-id", key["id"]),
            ("x-callcov-key-environment", "live"),
        ]
    elif credential == "jwt":
        headers += list(api.bearer(user).items())
        expected = [("x-callcov-user-id", user), ("x-callcov-auth-method", "jwt")]
    else:
        path = PUBLIC
    assert api.http.get(path, headers=headers).status_code == 200
    assert identity_headers_seen(recorder) == expected
    assert "admin" not in [v for _, v in recorder.received[-1].headers]


def test_configured_identity_header_names(
    tuned: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    headers = {"x_caller": "forged", "X-Caller-Via": "forged", **Api(tuned.url).bearer(user)}
    assert httpx.get(tuned.url + PATH, headers=headers).status_code == 200
    seen = recorder.received[-1]
    assert seen.header("x-caller") == user
    assert seen.header("x-caller-via") == "jwt"
    assert [k for k, _ in seen.headers if canonical(k) in ("x-caller", "x-caller-via")] == [
        "x-caller",
        "x-caller-via",
    ]


@pytest.mark.parametrize("path", [PATH, PUBLIC])
def test_api_keys_are_never_forwarded(
    api: Api, user: str, recorder: RecordingUpstream, path: str
) -> None:
    key = api.create_key(user)["api_key"]
    for headers in (
        [("X-API-Key", key)],
        [("Authorization", f"Bearer {key}")],
        [("Authorization", f"bearer   {key}")],
        [("X-API-Key", key), ("Authorization", f"Bearer {key}")],
        [("x_api_key", key), *api.bearer(user).items()],
    ):
        assert api.http.get(path, headers=headers).status_code == 200
        seen = recorder.received[-1]
        assert key not in repr(seen.headers)


def test_a_key_in_a_malformed_authorization_header_does_not_leak_via_a_public_path(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    key = api.create_key(user)["api_key"]
    assert api.http.get(PUBLIC, headers={"Authorization": f"Bearer\t{key}"}).status_code == 200
    assert key not in repr(recorder.received[-1].headers)


def test_jwt_authorization_is_forwarded_by_default(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    token = make_token(user)
    assert api.http.get(PATH, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert recorder.received[-1].header("authorization") == f"Bearer {token}"


def test_jwt_authorization_is_kept_back_when_configured(
    tuned: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    for path in (PATH, PUBLIC):
        response = httpx.get(tuned.url + path, headers=Api(tuned.url).bearer(user))
        assert response.status_code == 200
        assert recorder.received[-1].header("authorization") is None


def test_hop_by_hop_request_headers_are_dropped(
    sidecar: SidecarProcess, api: Api, user: str, recorder: RecordingUpstream
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", sidecar.config["server"]["port"])
    headers = {
        "Connection": "keep-alive, X-Hop-One, x_hop_two",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "X-Hop-One": "1",
        "X-Hop-Two": "2",
        "X-End-To-End": "kept",
        **api.bearer(user),
    }
    connection.request("GET", PATH, headers=headers)
    assert connection.getresponse().status == 200
    connection.close()
    names = {canonical(k) for k, _ in recorder.received[-1].headers}
    hop = {canonical(k) for k in headers} - {"x-end-to-end", "authorization", "connection"}
    assert not names & hop
    assert recorder.received[-1].header("x-end-to-end") == "kept"
    # The upstream hop has its own connection management; nothing of the client's.
    assert recorder.received[-1].header("connection") in (None, "keep-alive")


def test_hop_by_hop_response_headers_are_dropped(api: Api, user: str) -> None:
    upstream_headers = {
        "Connection": "X-Internal-Hop",
        "X-Internal-Hop": "secret",
        "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": "Basic",
        "Trailer": "X-Sum",
        "X-End-To-End": "kept",
        "X-Request-ID": "upstream-made",
    }
    response = api.http.get("/respond-headers", params=upstream_headers, headers=api.bearer(user))
    assert response.status_code == 200
    assert response.headers["x-end-to-end"] == "kept"
    for name in ("x-internal-hop", "keep-alive", "proxy-authenticate", "trailer"):
        assert name not in response.headers
    assert response.headers.get_list("x-request-id") != ["upstream-made"]
    assert len(response.headers.get_list("x-request-id")) == 1
    assert len(response.headers.get_list("date")) == 1


def test_x_forwarded_headers_are_set_and_client_values_ignored(
    api: Api, user: str, recorder: RecordingUpstream, sidecar: SidecarProcess
) -> None:
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=6.6.6.6;proto=https",
        "X-Real-IP": "6.6.6.6",
    }
    assert api.http.get(PATH, headers={**forged, **api.bearer(user)}).status_code == 200
    seen = recorder.received[-1]
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == f"127.0.0.1:{sidecar.config['server']['port']}"
    assert seen.header("forwarded") is None
    assert seen.headers.count(("x-real-ip", "127.0.0.1")) == 1  # issue 24 row 7
    assert "6.6.6.6" not in [v for _, v in seen.headers]


def test_x_forwarded_headers_from_a_trusted_proxy_are_extended(
    tuned: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    headers = {
        "X-Forwarded-For": "198.51.100.7, 10.0.0.2",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.callcov.example",
        "X-Real-IP": "6.6.6.6",
        **Api(tuned.url).bearer(user),
    }
    assert httpx.get(tuned.url + PATH, headers=headers).status_code == 200
    seen = recorder.received[-1]
    assert seen.header("x-forwarded-for") == "198.51.100.7, 10.0.0.2, 127.0.0.1"
    # The client as the trusted proxy's hops name it: the right-most untrusted one.
    assert [v for n, v in seen.headers if n.lower() == "x-real-ip"] == ["10.0.0.2"]
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-forwarded-host") == "api.callcov.example"


@pytest.mark.parametrize("path", [PATH, PUBLIC])
def test_request_id_is_propagated_and_echoed(
    api: Api, user: str, recorder: RecordingUpstream, path: str
) -> None:
    response = api.http.get(path, headers={"X-Request-ID": "trace-42.a_b:c", **api.bearer(user)})
    assert response.headers.get_list("x-request-id") == ["trace-42.a_b:c"]
    assert recorder.received[-1].header("x-request-id") == "trace-42.a_b:c"


@pytest.mark.parametrize("incoming", [None, "has space", "x" * 129, "a\tb"])
def test_request_id_is_generated_when_missing_or_unusable(
    api: Api, user: str, recorder: RecordingUpstream, incoming: str | None
) -> None:
    headers = api.bearer(user)
    if incoming is not None:
        headers["X-Request-ID"] = incoming
    response = api.http.get(PATH, headers=headers)
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert [v for k, v in recorder.received[-1].headers if k == "x-request-id"] == [generated]


def test_sidecar_made_responses_carry_the_request_id(api: Api) -> None:
    response = api.http.get(PATH, headers={"X-Request-ID": "denied-1"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "denied-1"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
def test_method_path_query_body_and_headers_are_preserved(
    sidecar: SidecarProcess, api: Api, user: str, recorder: RecordingUpstream, method: str
) -> None:
    key = api.create_key(user)["api_key"]
    body = bytes(range(256)) * 4
    target = "/api/v1/analysis/a%20b/%C3%A9?b=2&a=1&a=%2F&empty=&flag&plus=a+b&pct=%25&uni=%C3%A9"
    connection = http.client.HTTPConnection("127.0.0.1", sidecar.config["server"]["port"])
    connection.putrequest(method, target, skip_accept_encoding=True)
    sent = [
        ("X-API-Key", key),
        ("Content-Type", "application/octet-stream; charset=binary"),
        ("Content-Length", str(len(body))),
        ("X-Multi", "one"),
        ("Cookie", "session=abc; theme=dark"),
        ("X-Multi", "Two, Three"),
        ("User-Agent", "callcov-client/1.2"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, br"),
        ("X-Empty", ""),
    ]
    for name, value in sent:
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    response.read()
    connection.close()
    seen = recorder.received[-1]
    assert seen.method == method
    assert seen.raw_path == b"/api/v1/analysis/a%20b/%C3%A9"
    assert seen.query == target.partition("?")[2]
    assert seen.body_bytes == len(body)
    import hashlib

    assert seen.body_sha256 == hashlib.sha256(body).hexdigest()
    forwarded = [(k, v) for k, v in seen.headers if k in {n.lower() for n, _ in sent}]
    assert forwarded == [(n.lower(), v) for n, v in sent if n != "X-API-Key"]


def test_response_status_headers_and_body_are_relayed(api: Api, user: str) -> None:
    response = api.http.get(
        "/respond-headers",
        params=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Type", "text/x-odd")],
        headers=api.bearer(user),
    )
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["content-type"] == "text/x-odd"
    assert response.content == b"ok"
