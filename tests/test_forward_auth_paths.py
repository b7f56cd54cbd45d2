"""The proxy path's path tables (test_proxy_paths.py) through the forward-auth listener,
in each dialect: a decision is made on exactly the path the sidecar would have proxied,
refused as ambiguous in exactly the same cases (SPEC "Forward-auth decision listener";
issue 24 row 2). Sent with http.client, which puts the target on the wire as given."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import make_token
from tests.harness import SidecarProcess, free_port, wait_until
from tests.test_logs import access_lines
from tests.test_proxy_paths import (
    AMBIGUOUS,
    FORWARDED_PATHS,
    KEY_ENDPOINTS,
    PUBLIC,
    TRICKS,
    UNAMBIGUOUS,
    UNAUTHORIZED,
)

DIALECTS = ("nginx", "forwarded", "envoy")
PREFIX = "/authz"


@pytest.fixture(scope="module")
def deciders(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SidecarProcess]]:
    started: dict[str, SidecarProcess] = {}
    try:
        for dialect in DIALECTS:
            forward_auth = {
                "enabled": True, "port": free_port(), "dialect": dialect, "path_prefix": PREFIX
            }  # fmt: skip
            process = SidecarProcess(
                config_for(forward_auth=forward_auth), tmp_path_factory.mktemp(dialect)
            )
            started[dialect] = process.start()
        yield started
    finally:
        for process in started.values():
            process.stop()


def decide(
    process: SidecarProcess,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Ask ``process`` about ``method target`` as its dialect's front proxy would."""
    dialect = process.config["forward_auth"].get("dialect", "nginx")
    sent = dict(headers or {})
    own_method, own_target = "GET", "/"
    if dialect == "nginx":
        sent.update({"X-Original-Method": method, "X-Original-URI": target})
    elif dialect == "forwarded":
        sent.update({"X-Forwarded-Method": method, "X-Forwarded-Uri": target})
    else:  # Envoy puts path_prefix before the original target, on its own request line
        own_method = method
        if target.startswith("/"):
            own_target = PREFIX + target
        else:  # absolute form: the prefix goes before the path
            scheme, _, rest = target.partition("://")
            host, _, path = rest.partition("/")
            own_target = f"{scheme}://{host}{PREFIX}/{path}"
    connection = http.client.HTTPConnection(
        "127.0.0.1", process.config["forward_auth"]["port"], timeout=10
    )
    try:
        connection.request(own_method, own_target, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("target", TRICKS)
def test_path_tricks_are_decided_as_the_proxy_path_decides_them(
    deciders: dict[str, SidecarProcess], dialect: str, target: str
) -> None:
    status, headers, body = decide(deciders[dialect], "POST", target)
    assert status == 401, (target, body)
    assert json.loads(body) == UNAUTHORIZED
    assert headers["www-authenticate"] == "Bearer"
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("target", "decided"), FORWARDED_PATHS)
def test_the_decision_is_about_the_path_the_proxy_path_forwards(
    deciders: dict[str, SidecarProcess], user: str, dialect: str, target: str, decided: str
) -> None:
    process = deciders[dialect]
    rid = uuid.uuid4().hex
    bearer = {"Authorization": f"Bearer {make_token(user)}", "X-Request-ID": rid}
    status, _, body = decide(process, "GET", target + "?q=%2e%2e/x", bearer)
    assert status == 200, body
    wait_until(lambda: access_lines(process, rid) != [], timeout=5)
    [entry] = access_lines(process, rid)
    assert (entry["method"], entry["path"]) == ("GET", decided)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("target", "_"), PUBLIC)
def test_public_paths_are_allowed_without_a_credential(
    deciders: dict[str, SidecarProcess], dialect: str, target: str, _: str
) -> None:
    status, headers, body = decide(deciders[dialect], "POST", target + "?next=%2F")
    assert status == 200, body
    assert "x-callcov-user-id" not in headers


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("target", KEY_ENDPOINTS)
def test_key_endpoints_are_refused_however_spelled(
    deciders: dict[str, SidecarProcess], user: str, dialect: str, target: str
) -> None:
    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    for credential in ({}, bearer):
        status, headers, _ = decide(deciders[dialect], "GET", target, credential)
        assert status == 403, (target, credential)
        assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("target", AMBIGUOUS)
def test_ambiguous_paths_are_refused(
    deciders: dict[str, SidecarProcess], user: str, dialect: str, target: str
) -> None:
    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    for credential in ({}, bearer):
        status, headers, body = decide(deciders[dialect], "GET", target, credential)
        assert status == 400, (target, body)
        assert json.loads(body) == {"detail": "Ambiguous request path"}
        assert headers["cache-control"] == "no-store"
        assert "x-callcov-user-id" not in headers


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("target", UNAMBIGUOUS)
def test_unambiguous_paths_with_escapes_and_parameters_still_pass(
    deciders: dict[str, SidecarProcess], dialect: str, target: str
) -> None:
    status, _, body = decide(deciders[dialect], "GET", target)
    assert status == 200, body


def test_the_ambiguous_path_refusal_can_be_switched_off(spawn: Any, config_for: Any) -> None:
    config = config_for(
        server={"reject_ambiguous_paths": False},
        forward_auth={"enabled": True, "port": free_port()},
    )
    status, _, body = decide(spawn(config), "GET", "/api/v1/auth/..;/analysis/")
    assert status == 200, body  # public as the sidecar reads it, as on the proxy path
