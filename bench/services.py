"""The servers the bench measures, each started as its own foreground process on a
loopback port: redis-server, the nginx upstream (or its Python stand-in), sidecars
from a generated config, asgiproxy, and nginx sites in front of the upstream."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import (
    BENCH,
    Processes,
    free_port,
    listening_pids,
    port_open,
    process_tree,
    tail,
    wait_for,
)
from sidecar.auth.jwt_auth import mint
from sidecar.config.model import JwtConfig
from sidecar.redisconn.embedded import find_binary

BENCH_PYTHON = BENCH / ".venv" / "bin" / "python"
JWT_SECRET = "bench-jwt-secret-0123456789-abcdefghijklmnop"
HASH_SECRET = "bench-hash-secret-0123456789-abcdefghijklmnop"
PATH = "/api/v1/analysis/bench"
BENCH_USER = "bench-user"
# High enough never to trigger, so "rate limiting on" measures the check, not 429s.
NEVER_LIMITING = {"requests": 1_000_000, "per_seconds": 1}


@dataclass
class Sidecar:
    name: str
    config: dict[str, Any]
    args: tuple[str, ...] = ()
    source: Path | None = None  # run from this checkout instead of --source
    process: subprocess.Popen[bytes] | None = None
    log: Path = Path()

    @property
    def port(self) -> int:
        return int(self.config["server"]["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config['admin']['port']}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def metric(self, name: str) -> dict[str, float]:
        """Samples of one metric family from /metrics, by label string."""
        try:
            text = httpx.get(self.admin_url + "/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name):
                labels, _, value = line[len(name) :].rpartition(" ")
                found[labels] = float(value)
        return found


# Scenario `scoped`: a key limited to one scope (of four configured) that allows the
# bench's GET, from one of three networks (the last one the load generator's).
BENCH_SCOPES = {
    "analysis:read": [{"methods": ["GET", "HEAD"], "paths": ["/api/v1/analysis/"]}],
    "analysis:submit": [{"methods": ["POST"], "paths": ["/api/v1/analysis/"]}],
    "analysis:write": [
        {"methods": ["POST", "PUT", "PATCH", "DELETE"], "paths": ["/api/v1/analysis/"]}
    ],
    "reports:read": [{"methods": ["GET"], "paths": ["/api/v1/reports/"]}],
}
RESTRICTIONS = {
    "scopes": ["reports:read", "analysis:read"],
    "allowed_ips": ["10.0.0.0/8", "192.168.0.0/16", "127.0.0.0/8"],
}


def sidecar_config(
    *,
    upstream: str,
    redis_url: str,
    rate_limits: bool = True,
    cache_ttl: float = 60.0,
) -> dict[str, Any]:
    """The production path: API keys from the cache, rate limiting on with limits that
    never trigger, JSON access log on (to a file), metrics on (always are)."""
    return {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "upstream": {"url": upstream},
        "redis": {"url": redis_url},
        "auth": {
            "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET, "user_id_claim": "sub"},
            "api_keys": {"hash_secret": HASH_SECRET, "cache_ttl_seconds": cache_ttl},
            "public_paths": ["/api/v1/auth/"],
        },
        "rate_limits": {
            "enabled": rate_limits,
            "default": NEVER_LIMITING,
            "rules": [{"method": "POST", "path": "/api/v1/analysis/", **NEVER_LIMITING}],
        },
        "logging": {"level": "INFO", "access_log": True},
    }


class Services:
    """Starts and stops the measured servers of one run; configs and logs go to
    ``work``, sidecars run from the checkout ``source`` unless told otherwise."""

    def __init__(self, work: Path, source: Path) -> None:
        self.work = work
        self.source = source
        self.procs = Processes()
        self.nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
        )
        self.upstream_label = ""
        self.upstream_pid = 0
        self.peer: subprocess.Popen[bytes] | None = None  # asgiproxy
        self.peer_port = 0
        self.jwt = mint(JwtConfig(algorithms=("HS256",), secret=JWT_SECRET), BENCH_USER, 7200)

    def start_redis(self) -> str:
        port = free_port()
        directory = self.work / "redis"
        directory.mkdir()
        args = [
            find_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ]  # fmt: skip
        self.procs.start(args, self.work / "redis.log")
        wait_for("redis-server", lambda: port_open(port))
        return f"redis://127.0.0.1:{port}/0"

    def start_upstream(self) -> str:
        port = free_port()
        if self.nginx:
            self.upstream_label = "nginx `return 200` (1 worker)"
            conf = self.work / "nginx.conf"
            temp = self.work / "nginx-temp"
            temp.mkdir()
            body = '{"status":"ok","service":"callcov-bench-upstream"}'
            conf.write_text(
                f"""worker_processes 1;
daemon off;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{body}'; }}
    }}
}}
"""
            )
            child = self.procs.start([self.nginx, "-c", str(conf)], self.work / "nginx.log")
        else:
            self.upstream_label = (
                "FALLBACK: minimal Python asyncio upstream (nginx not installed) — "
                "direct-to-upstream numbers are not comparable to nginx"
            )
            child = self.procs.start(
                [sys.executable, str(BENCH / "upstreams.py"), "fast", "--port", str(port)],
                self.work / "upstream.log",
            )
        wait_for("upstream", lambda: port_open(port))
        self.upstream_pid = child.pid
        return f"http://127.0.0.1:{port}"

    def start_sidecar(
        self, sidecar: Sidecar, timeout: float = 25.0, wrapper: tuple[str, ...] = ()
    ) -> Sidecar:
        """Start ``sidecar`` (under ``wrapper``, a command prefix, if given)."""
        path = self.work / f"sidecar-{sidecar.name}.yaml"
        path.write_text(yaml.safe_dump(sidecar.config))
        sidecar.log = self.work / f"sidecar-{sidecar.name}.log"
        command = [*wrapper, sys.executable, "-m", "sidecar", "serve", "--config", str(path)]
        # Run from the checkout under test: `-m` puts the working directory first on
        # sys.path, so its sidecar package wins over the one installed in .venv.
        sidecar.process = self.procs.start(
            [*command, *sidecar.args], sidecar.log, cwd=sidecar.source or self.source
        )

        def answering() -> bool:
            assert sidecar.process is not None
            if sidecar.process.poll() is not None:
                raise RuntimeError(
                    f"sidecar {sidecar.name} exited with {sidecar.process.returncode}:\n"
                    + tail(sidecar.log)
                )
            try:
                connection = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=1)
                connection.request("GET", PATH)
                connection.getresponse().read()
                connection.close()
                return True
            except OSError:
                return False

        wait_for(f"sidecar {sidecar.name}", answering, timeout)
        if "--workers" in sidecar.args:
            try:
                wait_for(
                    "two processes serving the public port",
                    lambda: len(listening_pids(sidecar.port, process_tree(sidecar.pid))) >= 2,
                    timeout=10,
                )
            except RuntimeError:
                raise RuntimeError(
                    "serve --workers 2 did not start two processes serving the public port"
                ) from None
        return sidecar

    def stop_sidecar(self, sidecar: Sidecar) -> None:
        if sidecar.process is not None:
            self.procs.stop(sidecar.process, timeout=20)

    def start_asgiproxy(self, upstream: str) -> tuple[str, int]:
        """asgiproxy on ``self.peer_port`` (picked on first start, kept on restarts)."""
        if not BENCH_PYTHON.exists():
            raise RuntimeError("bench/.venv missing: run bench/run, which creates it")
        port = self.peer_port = self.peer_port or free_port()
        args = [str(BENCH_PYTHON), str(BENCH / "asgiproxy_app.py")]
        args += ["--upstream", upstream, "--port", str(port), "--concurrency", "256"]
        self.peer = self.procs.start(args, self.work / "asgiproxy.log")
        wait_for("asgiproxy", lambda: port_open(port))
        return f"http://127.0.0.1:{port}", self.peer.pid

    def create_key(self, sidecar: Sidecar, **restrictions: Any) -> tuple[str, str]:
        """A key on ``sidecar``; ``restrictions``: its ``scopes`` and ``allowed_ips``."""
        response = httpx.post(
            sidecar.url + "/api/v1/api-keys/",
            headers={"Authorization": f"Bearer {self.jwt}"},
            json={"description": "bench", **restrictions},
            timeout=10,
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating a key failed: {response.status_code} {response.text}")
        body = response.json()
        return body["api_key"], body["id"]

    def start_nginx_site(self, name: str, site: str, port: int, preamble: str = "") -> int:
        """A second nginx (1 worker) serving ``site`` (its ``server`` blocks) on ``port``;
        config and logs in the work dir; ``preamble``: main-context lines. Its pid."""
        assert self.nginx is not None
        directory = self.work / name
        directory.mkdir()
        (directory / "site.conf").write_text(site)
        conf = directory / "nginx.conf"
        conf.write_text(
            f"""{preamble}worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 10000000;
    include {directory}/site.conf;
}}
"""
        )
        child = self.procs.start([self.nginx, "-c", str(conf)], directory / "nginx.log")
        wait_for(f"nginx {name}", lambda: port_open(port))
        return child.pid

    def start_pass_nginx(self, upstream: str) -> tuple[str, int]:
        """nginx as a plain reverse proxy in front of the upstream, tuned as an operator
        would for an API: keep-alive to the upstream, no response buffering."""
        port = free_port()
        site = f"""upstream bench_upstream {{
    server {upstream.removeprefix("http://")};
    keepalive 256;
    keepalive_requests 10000000;
}}
server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
        proxy_pass http://bench_upstream;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
    }}
}}
"""
        return f"http://127.0.0.1:{port}", self.start_nginx_site("pass-nginx", site, port)

    def assertion_key(self) -> str:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        path = self.work / "assertion-ed25519.pem"
        path.write_bytes(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(path)
