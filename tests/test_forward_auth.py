"""The forward-auth listener's contract (SPEC "Forward-auth decision listener"), by the
headers each front proxy sends: nginx / ingress-nginx, Traefik / Caddy, Envoy. Real
sidecar processes, real Redis; the front proxies themselves are in
test_forward_auth_proxies.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.api.forward_auth import original_request
from sidecar.config.loading import parse
from sidecar.config.model import ConfigError
from sidecar.core.errors import DecisionRequestInvalid
from sidecar.keys import format as keyformat
from sidecar.proxy.target import Target
from tests.conftest import Api, make_token
from tests.harness import SidecarProcess, free_port, remember_secret
from tests.test_lifecycle import _serve_with_port_taken
from tests.upstream_app import RecordingUpstream

BUDGET = 3
ANALYSIS = 1


def decisions_config(config_for: Any, **override: Any) -> dict[str, Any]:
    forward_auth = {"enabled": True, "port": free_port(), "path_prefix": "/authz"}
    forward_auth.update(override.pop("forward_auth", {}))
    return config_for(
        forward_auth=forward_auth,
        rate_limits={
            "enabled": True,
            "default": {"requests": BUDGET, "per_seconds": 60},
            "rules": [
                {
                    "method": "POST",
                    "path": "/api/v1/analysis/",
                    "requests": ANALYSIS,
                    "per_seconds": 60,
                },
            ],
        },
        **override,
    )


class Decisions:
    def __init__(self, process: SidecarProcess) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{process.config['forward_auth']['port']}"

    def ask(self, path: str = "/", method: str = "GET", **headers: str) -> httpx.Response:
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        return httpx.request(method, self.url + path, headers=sent)


@pytest.fixture(scope="module")
def decisions(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decisions]:
    config = decisions_config(config_for, auth={"report_only_paths": ["/api/v1/trial/"]})
    process = SidecarProcess(config, tmp_path_factory.mktemp("fa")).start()
    yield Decisions(process)
    process.stop()


def nginx(method: str, uri: str) -> dict[str, str]:
    return {"X-Original-Method": method, "X-Original-URI": uri}


def jwt_for(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


DIALECTS = {
    "nginx": lambda path: ("GET", "/", {"X-Original-Method": "POST", "X-Original-URI": path}),
    "ingress-nginx": lambda path: (
        "GET", "/", {"X-Original-Method": "POST", "X-Original-URL": f"https://api.example{path}"},
    ),
    "forwarded": lambda path: (
        "GET", "/", {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": path},
    ),
    "envoy": lambda path: ("POST", "/authz" + path, {}),
}  # fmt: skip


@pytest.fixture(scope="module")
def by_dialect(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Decisions]]:
    """A decision listener per ``forward_auth.dialect``."""
    started: dict[str, Decisions] = {}
    try:
        for dialect in ("nginx", "forwarded", "envoy"):
            config = decisions_config(config_for, forward_auth={"dialect": dialect})
            process = SidecarProcess(config, tmp_path_factory.mktemp(dialect)).start()
            started[dialect] = Decisions(process)
        yield started
    finally:
        for decisions in started.values():
            decisions.process.stop()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_allows_with_identity_and_charges_the_original_route(
    by_dialect: dict[str, Decisions], user: str, dialect: str
) -> None:
    decisions = by_dialect["nginx" if dialect == "ingress-nginx" else dialect]
    key = Api(decisions.process.url).create_key(user)
    method, path, dialect_headers = DIALECTS[dialect]("/api/v1/analysis/?x=1")
    allowed = httpx.request(
        method, decisions.url + path, headers={**dialect_headers, "X-API-Key": key["api_key"]}
    )
    assert allowed.status_code == 200
    assert allowed.content == b""
    h = allowed.headers
    assert (h["x-callcov-user-id"], h["x-callcov-auth-method"]) == (user, "api_key")
    assert h["x-callcov-key-id"] == key["id"]
    assert h["cache-control"] == "no-store"
    # the POST /api/v1/analysis/ rule (1 per minute) was charged, not the default budget
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == (str(ANALYSIS), "0")
    refused = httpx.request(
        method, decisions.url + path, headers={**dialect_headers, "X-API-Key": key["api_key"]}
    )
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Rate limit exceeded"}
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["cache-control"] == "no-store"
    assert "x-callcov-user-id" not in refused.headers


# Every dialect's headers at once, each naming another request.
EVERY_DIALECT = {
    "X-Original-Method": "GET", "X-Original-URI": "/api/v1/auth/nginx",
    "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/v1/auth/forwarded",
}  # fmt: skip


@pytest.mark.parametrize(
    ("dialect", "own", "decided"),
    [
        ("nginx", "/", "/api/v1/auth/nginx"),
        ("forwarded", "/", "/api/v1/auth/forwarded"),
        ("envoy", "/authz/api/v1/things", "/api/v1/things"),
    ],
)
def test_only_the_configured_dialect_names_the_request(
    by_dialect: dict[str, Decisions], dialect: str, own: str, decided: str
) -> None:
    decisions = by_dialect[dialect]
    rid = uuid.uuid4().hex
    answer = decisions.ask(own, "DELETE", **EVERY_DIALECT, X_Request_ID=rid)
    # Another dialect's public path never decides: only the envoy request is protected.
    assert answer.status_code == (401 if dialect == "envoy" else 200)
    from tests.harness import wait_until
    from tests.test_logs import access_lines

    wait_until(lambda: access_lines(decisions.process, rid) != [], timeout=5)
    [entry] = access_lines(decisions.process, rid)
    assert (entry["method"], entry["path"]) == (
        "DELETE" if dialect == "envoy" else "GET",
        decided,
    )


@pytest.mark.parametrize(
    ("dialect", "headers", "detail"),
    [
        ("nginx", {}, "X-Original-Method and X-Original-URI or X-Original-URL"),
        ("nginx", {"X-Original-URI": "/x"}, "X-Original-Method and"),
        ("nginx", {"X-Original-Method": "GET"}, "X-Original-URI or X-Original-URL"),
        (
            "nginx",
            {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/v1/auth/x"},
            "(forward_auth.dialect: nginx)",
        ),
        ("forwarded", {}, "X-Forwarded-Method and X-Forwarded-Uri"),
        (
            "forwarded",
            {"X-Original-Method": "GET", "X-Original-URI": "/api/v1/auth/x"},
            "(forward_auth.dialect: forwarded)",
        ),
    ],
)
def test_a_decision_request_without_its_dialects_headers_is_refused(
    by_dialect: dict[str, Decisions], dialect: str, headers: dict[str, str], detail: str
) -> None:
    refused = by_dialect[dialect].ask(**headers)
    assert refused.status_code == 400
    assert detail in refused.json()["detail"]
    assert refused.headers["cache-control"] == "no-store"
    assert "x-callcov-user-id" not in refused.headers


def test_an_envoy_request_outside_the_path_prefix_is_refused(
    by_dialect: dict[str, Decisions],
) -> None:
    for own in ("/", "/api/v1/auth/x", "/authzx/api/v1/auth/x"):
        refused = by_dialect["envoy"].ask(own)
        assert refused.status_code == 400
        assert refused.json() == {
            "detail": "The request-target is outside forward_auth.path_prefix"
        }


def found(**headers: str | list[str]) -> dict[bytes, list[bytes]]:
    return {
        name.replace("_", "-").lower().encode(): [
            v.encode() for v in (value if isinstance(value, list) else [value])
        ]
        for name, value in headers.items()
    }


def test_original_request_by_dialect() -> None:
    own = ("PATCH", b"/authz/p/q?z=1")
    nginx_headers = found(X_Original_Method="put", X_Original_URI="/a/%2E%2E/b?q=1")
    method, target = original_request("nginx", nginx_headers, own)
    assert (method, target) == ("PUT", Target(b"/a/%2E%2E/b", "/a/../b", b"q=1"))
    url = found(X_Original_Method="GET", X_Original_URL="http://h/u%20v?x#f")
    assert original_request("nginx", url, own)[1] == Target(b"/u%20v", "/u v", b"x")
    both = found(X_Original_Method="GET", X_Original_URI="/u?x", X_Original_URL="https://h/u?x")
    assert original_request("nginx", both, own)[1].raw_path == b"/u"
    # A path, never a host: urlsplit would have read "//evil" as one.
    evil = found(X_Forwarded_Method="GET", X_Forwarded_Uri="//evil/api/v1/auth/x")
    assert original_request("forwarded", evil, own) == (
        "GET",
        Target(b"//evil/api/v1/auth/x", "//evil/api/v1/auth/x", b""),
    )
    assert original_request("envoy", {}, own, b"/authz") == (
        "PATCH",
        Target(b"/p/q", "/p/q", b"z=1"),
    )
    assert original_request("envoy", {}, ("GET", b"/authz"), b"/authz")[1].path == "/"
    assert original_request("envoy", {}, ("GET", b"/authz?q"), b"/authz")[1] == Target(
        b"/", "/", b"q"
    )
    assert original_request("envoy", {}, ("GET", b"//x"), None)[1].raw_path == b"//x"


@pytest.mark.parametrize(
    ("dialect", "headers", "detail"),
    [
        (
            "nginx",
            found(X_Original_Method="GET", X_Original_URI=["/a", "/b"]),
            "X-Original-URI sent more than once",
        ),
        (
            "nginx",
            found(X_Original_Method=["GET", "POST"], X_Original_URI="/a"),
            "X-Original-Method sent more than once",
        ),
        (
            "forwarded",
            found(X_Forwarded_Method="GET", X_Forwarded_Uri=["/a", "/a"]),
            "X-Forwarded-Uri sent more than once",
        ),
        (
            "nginx",
            found(
                X_Original_Method="GET",
                X_Original_URI="/api/v1/auth/x",
                X_Original_URL="https://h/api/v1/things",
            ),
            "X-Original-URI and X-Original-URL name different targets",
        ),
        (
            "nginx",
            found(X_Original_Method="G T", X_Original_URI="/a"),
            "X-Original-Method is not an HTTP method",
        ),
        (
            "nginx",
            found(X_Original_Method="GET", X_Original_URI="/a b"),
            "X-Original-URI is not a valid request-target",
        ),
        (
            "forwarded",
            found(X_Forwarded_Method="GET", X_Forwarded_Uri="evil"),
            "X-Forwarded-Uri is not a valid request-target",
        ),
        ("nginx", found(X_Original_Method="", X_Original_URI="/a"), "needs X-Original-Method"),
    ],
)
def test_original_request_refusals(
    dialect: str, headers: dict[bytes, list[bytes]], detail: str
) -> None:
    with pytest.raises(DecisionRequestInvalid) as refused:
        original_request(dialect, headers, ("GET", b"/"))
    assert detail in refused.value.detail


def test_an_unknown_dialect_is_a_config_error_at_its_path(config_for: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(decisions_config(config_for, forward_auth={"dialect": "traefik"}), {})
    [problem] = caught.value.problems
    assert problem.startswith("forward_auth.dialect: ")
    assert "nginx" in problem and "forwarded" in problem and "envoy" in problem


def test_denials_have_the_proxy_paths_shape_and_are_never_cached(decisions: Decisions) -> None:
    for credential in ({}, {"X-API-Key": remember_secret(keyformat.generate())}):
        denied = decisions.ask(**nginx("GET", "/api/v1/things"), **credential)
        assert denied.status_code == 401
        assert denied.json() == {"detail": "Could not validate credentials"}
        assert denied.headers["www-authenticate"] == "Bearer"
        assert denied.headers["cache-control"] == "no-store"
        assert denied.headers["content-type"] == "application/json"


def test_the_key_endpoints_are_never_allowed_through_a_decision(
    decisions: Decisions, user: str
) -> None:
    for uri in ("/api/v1/api-keys/", "/api/v1/api-keys", "/API/v1/x/../api-keys/1/rotate"):
        for credential in ({}, jwt_for(user)):
            denied = decisions.ask(**nginx("POST", uri), **credential)
            assert denied.status_code == 403
            assert "detail" in denied.json()
            assert denied.headers["cache-control"] == "no-store"


def test_public_paths_are_allowed_without_a_credential(decisions: Decisions) -> None:
    allowed = decisions.ask(**nginx("POST", "/api/v1/auth/login"))
    assert allowed.status_code == 200
    assert "x-callcov-user-id" not in allowed.headers
    assert "x-ratelimit-limit" not in allowed.headers


def test_report_only_decisions_allow_without_identity(decisions: Decisions) -> None:
    marked = decisions.ask(**nginx("GET", "/api/v1/trial/x"))
    assert marked.status_code == 200
    assert marked.headers["x-callcov-auth-would-deny"] == "401"
    assert "x-callcov-user-id" not in marked.headers
    assert marked.headers["cache-control"] == "no-store"
    # the same request outside the report-only prefix is refused
    assert decisions.ask(**nginx("GET", "/api/v1/other")).status_code == 401


def test_a_jwt_decision(decisions: Decisions, user: str) -> None:
    allowed = decisions.ask(**nginx("GET", "/api/v1/things"), **jwt_for(user))
    assert allowed.status_code == 200
    assert allowed.headers["x-callcov-auth-method"] == "jwt"
    assert "x-callcov-key-id" not in allowed.headers


def test_cache_seconds_and_unverifiable_keys(
    spawn: Any, config_for: Any, user: str, recorder: RecordingUpstream
) -> None:
    config = decisions_config(config_for, forward_auth={"cache_seconds": 30})
    cached = Decisions(spawn(config))
    allowed = cached.ask(**nginx("GET", "/x"), **jwt_for(user))
    assert allowed.headers["cache-control"] == "private, max-age=30"
    assert cached.ask(**nginx("GET", "/x")).headers["cache-control"] == "no-store"

    down = decisions_config(config_for)
    down["redis"] = {"url": f"redis://127.0.0.1:{free_port()}/0", "retry_after_seconds": 3}
    unavailable = Decisions(spawn(down))
    key = remember_secret(keyformat.generate())
    refused = unavailable.ask(**nginx("GET", "/x"), **{"X-API-Key": key})
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["cache-control"] == "no-store"
    assert refused.json() == {"detail": "Authentication store unavailable, retry later"}


def test_decisions_are_logged_and_counted(decisions: Decisions, user: str) -> None:
    rid = uuid.uuid4().hex
    decisions.ask(**nginx("DELETE", "/api/v1/things/1"), **jwt_for(user), X_Request_ID=rid)
    from tests.harness import wait_until
    from tests.test_logs import access_lines

    wait_until(lambda: access_lines(decisions.process, rid) != [], timeout=5)
    [entry] = access_lines(decisions.process, rid)
    assert (entry["route"], entry["method"], entry["path"]) == (
        "forward_auth",
        "DELETE",
        "/api/v1/things/1",
    )
    assert (entry["status"], entry["user_id"]) == (200, user)
    metrics = httpx.get(decisions.process.admin_url + "/metrics").text
    assert 'sidecar_requests_total{route="forward_auth",status="200"}' in metrics


def test_the_listener_runs_in_workers_mode(spawn: Any, config_for: Any, user: str) -> None:
    config = decisions_config(config_for)
    config["server"]["workers"] = 2
    workers = Decisions(spawn(config))
    statuses = {
        workers.ask(**nginx("GET", "/x"), **jwt_for(user)).status_code for _ in range(BUDGET)
    }
    assert statuses == {200}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_forward_auth_port_in_use_fails_fast(
    config_for: Any, tmp_path: Path, workers: int
) -> None:
    config = decisions_config(config_for)
    config["server"]["workers"] = workers
    result = _serve_with_port_taken(config, "forward_auth", tmp_path)
    assert result.returncode == 1
    assert (
        f"cannot listen on 127.0.0.1:{config['forward_auth']['port']} for the forward-auth "
        "listener (forward_auth.host/forward_auth.port): Address already in use"
    ) in result.stderr


def test_the_forward_auth_port_must_differ_from_the_others(config_for: Any) -> None:
    config = decisions_config(config_for)
    config["forward_auth"]["port"] = config["admin"]["port"]
    with pytest.raises(ConfigError) as caught:
        parse(config, {})
    assert caught.value.problems == [
        "forward_auth.port: must differ from admin.port (the forward_auth listener is separate)"
    ]
