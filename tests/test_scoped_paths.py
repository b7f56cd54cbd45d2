"""Every path that admits a request applies a restricted key's checks the same way
(SPEC Part 3): report-only mode, forward-auth decisions, WebSocket handshakes, and the
signed assertion's ``scope``. Real sidecar processes, real Redis and upstreams."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import make_token
from tests.harness import SidecarProcess, base_config, free_port, merge, remember_secret
from tests.test_assertion import write_private
from tests.test_scoped_keys import SCOPES, bearer, seen
from tests.test_websocket import EchoUpstream, closed_code
from tests.upstream_app import RecordingUpstream

TRUSTED = "127.0.0.2"


def create(base: str, user: str, **body: Any) -> str:
    response = httpx.post(base + "/api/v1/api-keys/", json=body, headers=bearer(user))
    assert response.status_code == 201, response.text
    return remember_secret(response.json()["api_key"])


# --- report-only ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reporting(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = config_for(
        auth={"scopes": SCOPES, "mode": "report"},
        rate_limits={"enabled": True, "default": {"requests": 1000, "per_seconds": 86400}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("report-scopes")).start()
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("body", "method"),
    [
        ({"scopes": ["analysis:read"]}, "POST"),  # outside its scopes
        ({"allowed_ips": ["203.0.113.0/24"]}, "GET"),  # from outside its addresses
    ],
)
def test_report_only_forwards_a_restricted_refusal_marked_403_without_identity(
    reporting: SidecarProcess,
    recorder: RecordingUpstream,
    user: str,
    body: dict[str, Any],
    method: str,
) -> None:
    key = create(reporting.url, user, **body)
    rid = uuid.uuid4().hex
    response = httpx.request(
        method,
        reporting.url + "/api/v1/analysis/",
        headers={"X-API-Key": key, "X-Request-ID": rid, "X-CallCov-Key-Scopes": "forged"},
    )
    assert response.status_code == 200
    assert "x-ratelimit-remaining" not in response.headers  # nothing was charged
    [forwarded] = seen(recorder, rid)
    assert forwarded.header("x-callcov-auth-would-deny") == "403"
    assert forwarded.header("x-callcov-user-id") is None
    assert forwarded.header("x-callcov-key-scopes") is None


# --- forward auth ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deciding(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    config = config_for(
        server={"trusted_proxies": [TRUSTED]},
        auth={"scopes": SCOPES},
        forward_auth={"enabled": True, "port": free_port()},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("decide-scopes")).start()
    yield process
    process.stop()


def decide(
    process: SidecarProcess,
    key: str,
    method: str,
    uri: str,
    *,
    source: str = "127.0.0.1",
    **extra: str,
) -> httpx.Response:
    url = f"http://127.0.0.1:{process.config['forward_auth']['port']}/"
    headers = {"X-API-Key": key, "X-Original-Method": method, "X-Original-URI": uri, **extra}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(url, headers=headers)


def test_a_decision_applies_the_scopes_to_the_original_request(
    deciding: SidecarProcess, user: str
) -> None:
    key = create(deciding.url, user, scopes=["analysis:read"])
    allowed = decide(deciding, key, "GET", "/api/v1/analysis/7?x=1")
    assert allowed.status_code == 200
    assert allowed.headers["x-callcov-key-scopes"] == "analysis:read"
    refused = decide(deciding, key, "POST", "/api/v1/analysis/")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "API key does not have the required scope"}
    assert refused.headers["x-callcov-accepted-scopes"] == "analysis:submit,analysis:write"
    assert refused.headers["cache-control"] == "no-store"


def test_a_decision_checks_the_peer_or_its_forwarded_address_when_trusted(
    deciding: SidecarProcess, user: str
) -> None:
    key = create(deciding.url, user, allowed_ips=["203.0.113.0/24"])
    forwarded = {"X-Forwarded-For": "203.0.113.50"}
    untrusted = decide(deciding, key, "GET", "/a", **forwarded)
    assert untrusted.status_code == 403
    assert untrusted.json() == {"detail": "API key is not allowed from this address"}
    assert decide(deciding, key, "GET", "/a", source=TRUSTED, **forwarded).status_code == 200
    outside = {"X-Forwarded-For": "198.51.100.1"}
    assert decide(deciding, key, "GET", "/a", source=TRUSTED, **outside).status_code == 403
    peer_key = create(deciding.url, user, allowed_ips=["127.0.0.1"])
    assert decide(deciding, peer_key, "GET", "/a").status_code == 200


# --- WebSocket handshake --------------------------------------------------------------


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    server = EchoUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ws_scoped(
    redis_server: Any, echo: EchoUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(ws_config(redis_server, echo), tmp_path_factory.mktemp("ws")).start()
    yield process
    process.stop()


WS_SCOPES = {
    "live:read": [{"methods": ["GET"], "paths": ["/ws/"]}],
    "chat:read": [{"methods": ["GET"], "paths": ["/chat/"]}],
    **SCOPES,
}


def ws_config(redis_server: Any, echo: EchoUpstream) -> dict[str, Any]:
    return merge(
        base_config(redis_url=redis_server.url, upstream_url=echo.url),
        {"auth": {"scopes": WS_SCOPES}},
    )


def test_a_websocket_handshake_outside_the_key_scopes_gets_403(
    ws_scoped: SidecarProcess, echo: EchoUpstream, user: str
) -> None:
    url = ws_scoped.url.replace("http://", "ws://") + "/ws/echo"
    allowed = create(ws_scoped.url, user, scopes=["live:read"])
    with connect(url, additional_headers={"X-API-Key": allowed}, open_timeout=10) as socket:
        socket.send("hi")
        assert socket.recv(timeout=10) == "hi"
    assert echo.handshakes[-1]["x-callcov-key-scopes"] == "live:read"
    before = len(echo.handshakes)
    refused_key = create(ws_scoped.url, user, scopes=["analysis:read"])
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"X-API-Key": refused_key}, open_timeout=10)
    assert refused.value.response.status_code == 403
    assert refused.value.response.headers["x-callcov-accepted-scopes"] == "live:read"
    assert len(echo.handshakes) == before


def test_a_patch_on_another_instance_closes_the_sockets_it_no_longer_allows(
    ws_scoped: SidecarProcess, redis_server: Any, echo: EchoUpstream, spawn: Any, user: str
) -> None:
    elsewhere = spawn(ws_config(redis_server, echo))  # a second instance, same Redis
    created = httpx.post(
        elsewhere.url + "/api/v1/api-keys/",
        json={"scopes": ["live:read", "chat:read"]},
        headers=bearer(user),
    ).json()
    key = remember_secret(created["api_key"])
    base = ws_scoped.url.replace("http://", "ws://")
    headers = {"X-API-Key": key}
    with (
        connect(base + "/ws/echo", additional_headers=headers, open_timeout=10) as live,
        connect(base + "/chat/echo", additional_headers=headers, open_timeout=10) as chat,
    ):
        for socket in (live, chat):
            socket.send("ping")
            assert socket.recv(timeout=10) == "ping"
        url = f"{elsewhere.url}/api/v1/api-keys/{created['id']}"
        narrowed = httpx.patch(url, json={"scopes": ["chat:read"]}, headers=bearer(user))
        assert narrowed.status_code == 200
        code, seconds = closed_code(live)
        assert code == 1008
        print(f"\nsocket closed {seconds * 1000:.0f} ms after the PATCH on the other instance")
        chat.send("still allowed")
        assert chat.recv(timeout=10) == "still allowed"
        fenced = httpx.patch(url, json={"allowed_ips": ["203.0.113.0/24"]}, headers=bearer(user))
        assert fenced.status_code == 200
        assert closed_code(chat)[0] == 1008


# --- the signed assertion -------------------------------------------------------------


def test_the_assertion_of_a_scoped_key_carries_scope(
    config_for: Any, spawn: Any, tmp_path: Path, recorder: RecordingUpstream, user: str
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    assertion = {"enabled": True, "private_key_file": write_private(tmp_path / "k.pem", private)}
    process = spawn(config_for(auth={"scopes": SCOPES}, identity={"assertion": assertion}))
    tokens = {}
    for name, body in (("scoped", {"scopes": ["analysis:read", "reports:read"]}), ("plain", {})):
        key = create(process.url, user, **body)
        rid = uuid.uuid4().hex
        response = httpx.get(
            process.url + "/api/v1/analysis/", headers={"X-API-Key": key, "X-Request-ID": rid}
        )
        assert response.status_code == 200
        [forwarded] = seen(recorder, rid)
        tokens[name] = jwt.decode(
            forwarded.header("x-callcov-identity") or "",
            private.public_key(),
            algorithms=["EdDSA"],
            audience="callcov-upstream",
        )
    assert tokens["scoped"]["scope"] == "analysis:read reports:read"
    assert "scope" not in tokens["plain"]
    jwt_request = httpx.get(
        process.url + "/a", headers={"Authorization": f"Bearer {make_token(user)}"}
    )
    assert jwt_request.status_code == 200


def test_a_report_only_decision_marks_a_restricted_refusal_and_a_renamed_scopes_header(
    config_for: Any, spawn: Any, user: str
) -> None:
    config = config_for(
        auth={"scopes": SCOPES, "report_only_paths": ["/api/v1/analysis/"]},
        identity={"headers": {"scopes": "X-Key-Scopes"}},
        forward_auth={"enabled": True, "port": free_port()},
    )
    process = spawn(config)
    key = create(process.url, user, scopes=["analysis:read"])
    marked = decide(process, key, "POST", "/api/v1/analysis/")
    assert marked.status_code == 200
    assert marked.headers["x-callcov-auth-would-deny"] == "403"
    assert "x-callcov-user-id" not in marked.headers
    allowed = decide(process, key, "GET", "/api/v1/analysis/")
    assert allowed.status_code == 200
    assert allowed.headers["x-key-scopes"] == "analysis:read"
    assert "x-callcov-key-scopes" not in allowed.headers
    enforced = decide(process, key, "POST", "/api/v1/reports/")  # not a report-only path
    assert enforced.status_code == 403
