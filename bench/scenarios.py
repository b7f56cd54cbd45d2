"""The throughput scenarios: which servers each drives, with which credentials and
connections. Starting them starts their sidecars (full, rate limiting off, cold key,
two workers, the deployment modes, a --baseline build), asgiproxy, the nginx sites,
and creates the bench key."""

from __future__ import annotations

import httpx

from bench.context import Run
from bench.fronts import SET_MISC, nginx_front, traefik
from bench.harness import free_port, git_state, wait_for
from bench.load import Scenario
from bench.otlp_sink import OtlpSink
from bench.services import BENCH_SCOPES, PATH, RESTRICTIONS, Sidecar, sidecar_config

# (scenario, sidecar name, tracing.sample_ratio): the default ratio, every request, and
# none (what tracing costs a request it does not record: its trace context alone).
TRACED = (
    ("full_traced", "traced", 0.01),
    ("full_traced_all", "traced-all", 1.0),
    ("full_traced_none", "traced-none", 0.0),
)


def throughput_scenarios(run: Run, redis_url: str, upstream: str) -> list[Scenario]:
    """The selected scenarios that are available, their servers started (the sidecars
    into ``run.sidecars``) and the bench key created on sidecar ``full``."""
    c = run.o.connections
    full_config = sidecar_config(upstream=upstream, redis_url=redis_url)
    full_config["auth"]["scopes"] = BENCH_SCOPES  # for `scoped`; an unrestricted key ignores them
    full = Sidecar("full", full_config)
    rl_off = Sidecar(
        "rl-off", sidecar_config(upstream=upstream, redis_url=redis_url, rate_limits=False)
    )
    cold = Sidecar("cold", sidecar_config(upstream=upstream, redis_url=redis_url, cache_ttl=1e-6))
    workers2 = Sidecar(
        "workers2",
        sidecar_config(upstream=upstream, redis_url=redis_url),
        args=("--workers", "2"),
    )
    run.log("starting sidecars: full, rl-off, cold")
    for sidecar in (full, rl_off, cold):
        run.sidecars[sidecar.name] = run.services.start_sidecar(sidecar)
    deployment_sidecars(run, redis_url, upstream)
    wait_for(
        "sidecar full /readyz",
        lambda: httpx.get(full.admin_url + "/readyz", timeout=2).status_code == 200,
    )
    run.api_key, run.api_key_id = run.services.create_key(full)
    key_header = f"X-API-Key: {run.api_key}"
    scoped_key, _ = run.services.create_key(full, **RESTRICTIONS)
    scoped_header = f"X-API-Key: {scoped_key}"
    jwt_header = f"Authorization: Bearer {run.services.jwt}"
    check_rate_limit_headers(run, full, rl_off)
    if not run.wanted("workers2"):
        run.results.unavailable["workers2"] = "skipped (--skip workers2)"
    elif run.selected("workers2"):
        run.log("starting sidecar: serve --workers 2")
        try:
            run.services.start_sidecar(workers2)
            run.sidecars["workers2"] = workers2
        except RuntimeError as exc:
            run.results.unavailable["workers2"] = str(exc).splitlines()[0]
            run.log(f"workers2 not available: {run.results.unavailable['workers2']}")
            run.services.stop_sidecar(workers2)
    peer_url, peer_pid = run.services.start_asgiproxy(upstream)
    path = PATH
    baseline: list[Scenario] = []
    if run.o.baseline is not None and run.selected("baseline"):
        # Its own Redis database: an older build may not read today's key records.
        base = Sidecar(
            "baseline",
            sidecar_config(upstream=upstream, redis_url=redis_url.rsplit("/", 1)[0] + "/1"),
            source=run.o.baseline,
        )
        run.log(f"starting sidecar: baseline from {run.o.baseline}")
        run.sidecars["baseline"] = run.services.start_sidecar(base)
        base_key, _ = run.services.create_key(base)
        build = git_state(run.o.baseline)[0]
        baseline += [
            Scenario("baseline", f"as full, the build at {build}",
                     base.url + path, [f"X-API-Key: {base_key}"], base.pid, c, "sidecar"),
            Scenario("baseline_c1", f"as full_c1, the build at {build}",
                     base.url + path, [f"X-API-Key: {base_key}"], base.pid, 1, "sidecar"),
        ]  # fmt: skip
    candidates = [
        Scenario("direct", "direct to upstream", upstream + path, [], run.services.upstream_pid, c,
                 "upstream"),
        Scenario("full", "sidecar, API key (cached), full production path", full.url + path,
                 [key_header], full.pid, c, "sidecar"),
        Scenario("asgiproxy", "asgiproxy (no auth, buffers bodies)", peer_url + path, [],
                 peer_pid, c, "asgiproxy"),
        Scenario("scoped", "as full (same process), the key scoped and address-restricted",
                 full.url + path, [scoped_header], full.pid, c, "sidecar"),
        Scenario("rl_off", "sidecar, API key (cached), rate limiting off", rl_off.url + path,
                 [key_header], rl_off.pid, c, "sidecar"),
        Scenario("jwt", "sidecar, JWT (HS256), full production path", full.url + path,
                 [jwt_header], full.pid, c, "sidecar"),
        Scenario("cold", "sidecar, API key cold (Redis lookup every request)",
                 cold.url + path, [key_header], cold.pid, c, "sidecar"),
        Scenario("workers2", "sidecar, full production path, serve --workers 2",
                 workers2.url + path, [key_header],
                 workers2.pid if workers2.process else 0, c, "sidecar (all workers)"),
        Scenario("direct_c1", "direct to upstream, c1", upstream + path, [],
                 run.services.upstream_pid, 1, "upstream"),
        Scenario("full_c1", "sidecar full production path, c1", full.url + path,
                 [key_header], full.pid, 1, "sidecar"),
        Scenario("asgiproxy_c1", "asgiproxy, c1", peer_url + path, [], peer_pid, 1,
                 "asgiproxy"),
    ]  # fmt: skip
    candidates += baseline
    # nginx_pass just before the nginx fronts it is the denominator of (as asgiproxy just
    # after full): on a host whose speed drifts within a minute, a ratio's two rows are
    # measured side by side.
    if run.selected("nginx_pass"):
        if run.services.nginx is None:
            run.results.unavailable["nginx_pass"] = "nginx not installed"
        else:
            pass_url, pass_pid = run.services.start_pass_nginx(upstream)
            candidates += [
                Scenario("nginx_pass_c1", "nginx reverse proxy, c1", pass_url + path, [],
                         pass_pid, 1, "front nginx"),
                Scenario("nginx_pass", "nginx reverse proxy (keepalive upstream, "
                         "proxy_buffering off), no auth", pass_url + path, [], pass_pid, c,
                         "front nginx"),
            ]  # fmt: skip
    candidates += deployment_scenarios(run, upstream, key_header)
    return [
        s
        for s in candidates
        if run.selected(s.key) and s.key.removesuffix("_c1") not in run.results.unavailable
    ]


NGINX_FRONTS = {"nginx_fa": "nginx.conf", "nginx_fa_cached": "nginx-cached.conf"}


def deployment_sidecars(run: Run, redis_url: str, upstream: str) -> None:
    """The sidecars of the deployment-mode scenarios, started only when selected:
    ``fa`` (forward-auth listener on, allows cacheable for 1 s: only nginx-cached.conf
    caches them), ``fa_forwarded`` (the same for Traefik's dialect) and ``assertion``
    (identity assertion on)."""
    if any(run.selected(key) for key in ("fa_decide", *NGINX_FRONTS)):
        config = sidecar_config(upstream=upstream, redis_url=redis_url)
        config["forward_auth"] = {"enabled": True, "port": free_port(), "cache_seconds": 1}
        run.sidecars["fa"] = run.services.start_sidecar(Sidecar("fa", config))
    if run.selected("traefik_fa"):
        config = sidecar_config(upstream=upstream, redis_url=redis_url)
        config["forward_auth"] = {"enabled": True, "port": free_port(), "dialect": "forwarded"}
        run.sidecars["fa_forwarded"] = run.services.start_sidecar(Sidecar("fa_forwarded", config))
    for key, name, ratio in TRACED:
        if run.selected(key):
            if run.otlp_sink is None:
                run.otlp_sink = OtlpSink()
            config = sidecar_config(upstream=upstream, redis_url=redis_url)
            config["tracing"] = {
                "enabled": True,
                "otlp_endpoint": run.otlp_sink.endpoint,
                "sample_ratio": ratio,
            }
            run.sidecars[name] = run.services.start_sidecar(Sidecar(name, config))
    if run.selected("assertion"):
        config = sidecar_config(upstream=upstream, redis_url=redis_url)
        config["identity"] = {
            "assertion": {"enabled": True, "private_key_file": run.services.assertion_key()}
        }
        run.sidecars["assertion"] = run.services.start_sidecar(Sidecar("assertion", config))


def deployment_scenarios(run: Run, upstream: str, key_header: str) -> list[Scenario]:
    c = run.o.connections
    out: list[Scenario] = []
    fa = run.sidecars.get("fa")
    if fa is not None:
        decisions = f"http://127.0.0.1:{fa.config['forward_auth']['port']}/"
        original = ["X-Original-Method: GET", f"X-Original-URI: {PATH}"]
        out.append(
            Scenario("fa_decide", "forward-auth decisions (nginx dialect), key cached, "
                     "rate limit on", decisions, [key_header, *original], fa.pid, c,
                     "sidecar")
        )  # fmt: skip
        out += nginx_front_scenarios(run, fa, upstream, key_header)
    out += traefik_scenarios(run, upstream, key_header)
    for key, name, ratio in TRACED:
        traced = run.sidecars.get(name)
        if traced is not None:
            out.append(
                Scenario(key, f"as full, tracing on at sample_ratio {ratio:g} (OTLP/HTTP "
                         "to a stand-in collector)", traced.url + PATH, [key_header],
                         traced.pid, c, "sidecar")
            )  # fmt: skip
    asserting = run.sidecars.get("assertion")
    if asserting is not None:
        out.append(
            Scenario("assertion", "as full, signed identity assertion on (EdDSA)",
                     asserting.url + PATH, [key_header], asserting.pid, c, "sidecar")
        )  # fmt: skip
    return out


def nginx_front_scenarios(run: Run, fa: Sidecar, upstream: str, key_header: str) -> list[Scenario]:
    out: list[Scenario] = []
    labels = {
        "nginx_fa": "nginx auth_request (deploy/forward-auth/nginx.conf: keepalive to the "
        "decisions) + sidecar decisions -> upstream",
        "nginx_fa_cached": "as nginx_fa with a 1 s decision cache keyed by a hash of the "
        "credential (nginx-cached.conf, set-misc HMAC-SHA256)",
    }
    for key, variant in NGINX_FRONTS.items():
        if not run.selected(key):
            continue
        if run.services.nginx is None:
            run.results.unavailable[key] = "nginx not installed"
        elif "cached" in key and not all(module.exists() for module in SET_MISC):
            run.results.unavailable[key] = "set-misc not installed (libnginx-mod-http-set-misc)"
        else:
            url, _ = nginx_front(run.services, variant, fa.config["forward_auth"]["port"], upstream)
            out.append(
                Scenario(key, labels[key], url + PATH, [key_header], fa.pid, run.o.connections,
                         "sidecar (decisions only)")
            )  # fmt: skip
    return out


def traefik_scenarios(run: Run, upstream: str, key_header: str) -> list[Scenario]:
    """``traefik_fa`` (deploy/forward-auth/traefik/ asking ``fa_forwarded``) and
    ``traefik_pass`` (the same routes, no middlewares)."""
    out: list[Scenario] = []
    c = run.o.connections
    fa = run.sidecars.get("fa_forwarded")
    for key, decide in (("traefik_fa", True), ("traefik_pass", False)):
        if not run.selected(key):
            continue
        try:
            port = fa.config["forward_auth"]["port"] if fa is not None else 0
            url, pid = traefik(run.services, port, upstream, decide=decide)
        except RuntimeError as exc:
            run.results.unavailable[key] = str(exc).splitlines()[0]
            continue
        if decide:
            assert fa is not None
            out.append(
                Scenario(key, "Traefik forwardAuth (deploy/forward-auth/traefik/) + sidecar "
                         "decisions -> upstream", url + PATH, [key_header], fa.pid, c,
                         "sidecar (decisions only)")
            )  # fmt: skip
        else:
            out.append(
                Scenario(key, "Traefik reverse proxy, no auth (the same routes)", url + PATH,
                         [], pid, c, "front Traefik")
            )  # fmt: skip
    return out


def check_rate_limit_headers(run: Run, full: Sidecar, rl_off: Sidecar) -> None:
    headers = {"X-API-Key": run.api_key}
    on = httpx.get(full.url + PATH, headers=headers, timeout=10).headers
    off = httpx.get(rl_off.url + PATH, headers=headers, timeout=10).headers
    if "x-ratelimit-limit" not in on:
        run.results.notes.append(
            "Rate limiting ON sent no `X-RateLimit-*` headers: the limiter is not "
            "implemented in this build (a no-op), so `full` and `rl_off` do the same work."
        )
    else:
        run.results.notes.append(
            f"Rate limiting ON answered `X-RateLimit-Limit: {on['x-ratelimit-limit']}`; "
            f"OFF sent {'no' if 'x-ratelimit-limit' not in off else 'some'} rate-limit "
            "headers."
        )
