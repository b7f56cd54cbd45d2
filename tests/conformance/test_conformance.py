"""Differential conformance: the corpus of cases.py through the sidecar, and through a
real nginx (proxy_pass, buffering off) when one is installed. Every case checks the
client's and the upstream's view; where nginx is present, any difference from it fails
unless the case is listed in DELIBERATE (with its reason; also in docs/proxying.md).

The corpus runs once per proxy, cases concurrently, then the cases that need a warm
pooled connection one at a time."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conformance.cases import CASES, DELIBERATE, OK, Case
from tests.conformance.client import Response, exchange
from tests.conformance.upstream import Arrival, Reply, Script, ScriptedUpstream
from tests.conftest import make_token
from tests.harness import (
    RedisProcess,
    SidecarProcess,
    base_config,
    free_port,
    merge,
    remember_secret,
    wait_until,
)

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
_UPSTREAM_IGNORED = frozenset(
    {
        b"host", b"connection", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
        b"x-real-ip", b"x-request-id", b"content-length", b"transfer-encoding",
    }
)  # fmt: skip
_WARM = "warm"


@dataclass
class Outcome:
    responses: list[Response]
    arrivals: list[Arrival]

    def view(self) -> tuple[object, ...]:
        return (
            [_generated(r) or _ordered(r.view()) for r in self.responses],
            [
                (
                    a.method,
                    a.target,
                    a.body if a.complete else "(cut off: length depends on timing)",
                    [(n.lower(), v) for n, v in a.headers if n.lower() not in _UPSTREAM_IGNORED],
                    a.trailers,
                )
                for a in self.arrivals
            ],
        )


def _generated(response: Response) -> tuple[object, ...] | None:
    """An error page the proxy made itself: only its status is compared (the sidecar's
    are JSON, nginx's HTML)."""
    kind = dict(response.headers).get(b"content-type", b"")
    if (
        kind == b"application/json" and response.body.startswith(b'{"detail"')
    ) or b"<center>nginx" in response.body:
        return ("generated", response.status)
    return None


def _ordered(view: tuple[object, ...]) -> tuple[object, ...]:
    """nginx moves Content-Length to the front; its position carries no meaning."""
    interim, status, headers, body, trailers, complete = view
    pairs = list(headers)  # type: ignore[call-overload]
    length = [v for n, v in pairs if n == b"content-length"]
    if not complete:
        body = "(cut off: length depends on timing)"
    headers = [p for p in pairs if p[0] != b"content-length"]
    return (interim, status, headers, length, body, trailers, complete)


def run_corpus(port: int, upstream: ScriptedUpstream, key: bytes = b"") -> dict[str, Outcome]:
    upstream.scripts[_WARM] = Script((Reply(OK),))
    for item in CASES:
        upstream.scripts[item.name] = item.script

    def one(item: Case) -> list[Response]:
        path = b"/%b/%b" % (b"p" if item.protected else b"c", item.name.encode())
        parts = tuple(part.replace(b"{p}", path).replace(b"{key}", key) for part in item.request)
        return exchange(port, parts, item.methods)

    results: dict[str, list[Response]] = {}
    with ThreadPoolExecutor(16) as pool:
        concurrent = [c for c in CASES if not c.sequential]
        for item, responses in zip(concurrent, pool.map(one, concurrent), strict=True):
            results[item.name] = responses
    for item in (c for c in CASES if c.sequential):
        warm = exchange(port, (b"GET /c/warm HTTP/1.1\r\nHost: t\r\n\r\n",), ("GET",))
        assert warm and warm[0].status == 200
        results[item.name] = one(item)
    return {
        name: Outcome(responses, list(upstream.arrivals.get(name, [])))
        for name, responses in results.items()
    }


@pytest.fixture(scope="module")
def sidecar_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    upstream = ScriptedUpstream()
    directory = tmp_path_factory.mktemp("conformance")
    with RedisProcess(directory) as redis:
        config = merge(
            base_config(redis_url=redis.url, upstream_url=f"http://127.0.0.1:{upstream.port}"),
            {
                "auth": {"public_paths": ["/c/"]},
                "upstream": {"read_timeout_seconds": 3},
            },
        )
        process = SidecarProcess(config, directory).start()
        _SIDECAR.append(process)
        try:
            created = httpx.post(
                process.url + "/api/v1/api-keys/",
                json={},
                headers={"Authorization": f"Bearer {make_token('conformance')}"},
            )
            key = remember_secret(created.json()["api_key"]).encode()
            yield run_corpus(config["server"]["port"], upstream, key)
        finally:
            process.stop()
            upstream.close()


_SIDECAR: list[SidecarProcess] = []


def test_the_sidecar_logged_no_traceback(sidecar_outcomes: dict[str, Outcome]) -> None:
    """A case answered "correctly" after an exception inside the sidecar (a 204/304
    with Content-Length used to be) is still a failure."""
    assert sidecar_outcomes
    log = _SIDECAR[-1].logs()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


_NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_read_timeout 3s;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx_outcomes() -> Iterator[dict[str, Outcome] | None]:
    if NGINX is None:
        yield None
        return
    upstream = ScriptedUpstream()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="conformance-nginx-") as prefix:
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(prefix=prefix, upstream=upstream.port, port=port))
        process = subprocess.Popen(
            [NGINX, "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _listening(port), timeout=10)
            yield run_corpus(port, upstream)
        finally:
            process.terminate()
            process.wait(10)
            upstream.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert set(DELIBERATE) <= {c.name for c in CASES}


@pytest.mark.parametrize("item", CASES, ids=[c.name for c in CASES])
def test_case(
    item: Case,
    sidecar_outcomes: dict[str, Outcome],
    nginx_outcomes: dict[str, Outcome] | None,
) -> None:
    ours = sidecar_outcomes[item.name]
    item.client(ours.responses)
    item.upstream(ours.arrivals)
    if nginx_outcomes is None or not item.nginx or item.name in DELIBERATE:
        return
    theirs = nginx_outcomes[item.name]
    assert ours.view() == theirs.view(), (
        f"differs from nginx (not a listed deliberate difference):\n"
        f"sidecar: {_short(ours.view())}\nnginx:   {_short(theirs.view())}"
    )


def _short(view: object) -> str:
    text = repr(view)
    return text if len(text) < 1500 else text[:1500] + "..."
