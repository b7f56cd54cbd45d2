"""The sidecar benchmark (issue 6). Run it through ``bench/run``; see bench/README.md.

Starts everything it measures as its own foreground processes on loopback ports
(nginx upstream, redis-server, sidecars, asgiproxy), drives them with wrk in
interleaved rounds, and writes a markdown report to bench/results/. Every process it
started is stopped on exit, also on CTRL-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BENCH_PYTHON = BENCH / ".venv" / "bin" / "python"
PY_SPY = BENCH / ".venv" / "bin" / "py-spy"
sys.path.insert(0, str(BENCH))

import instructions  # noqa: E402
import ws_client  # noqa: E402
from profile_summary import markdown as profile_markdown  # noqa: E402
from profile_summary import summarise  # noqa: E402

from sidecar.auth.jwt_auth import mint  # noqa: E402
from sidecar.config.model import JwtConfig  # noqa: E402
from sidecar.redisconn.embedded import find_binary  # noqa: E402

JWT_SECRET = "bench-jwt-secret-0123456789-abcdefghijklmnop"
HASH_SECRET = "bench-hash-secret-0123456789-abcdefghijklmnop"
PATH = "/api/v1/analysis/bench"
INSTRUCTION_REQUESTS = 2000  # counted under callgrind (bench/instructions.py)
_THIS_BUILD = "this build"
_ASSERTION_ON = "this build, identity assertion on (EdDSA)"
BENCH_USER = "bench-user"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
WS_PATH = "/ws/bench"
WS_FRAME = 64 * 1024
# High enough never to trigger, so "rate limiting on" measures the check, not 429s.
NEVER_LIMITING = {"requests": 1_000_000, "per_seconds": 1}


# ---------------------------------------------------------------------------- processes


def _version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _shown(path: Path) -> str:
    """A path relative to the repo when it is inside it, else as given."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


class Processes:
    """Every child this script starts, each in its own process group, stopped by id."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as sink:
            child = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
        else:
            # The leader is gone; make sure nothing it started lingers in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f}s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks: dict[int, int] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def listening_pids(port: int, pids: list[int]) -> list[int]:
    """Those of ``pids`` holding a socket that listens on ``port`` (SO_REUSEPORT workers
    each hold their own; a shared socket counts for every holder)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    holders = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        holders.append(pid)
                        break
    return holders


def vm_kib(pid: int, name: str) -> int:
    """A memory figure of ``/proc/<pid>/status`` (VmHWM: peak RSS, VmRSS: RSS now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for {pid}")


# ---------------------------------------------------------------------------- services


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


# ---------------------------------------------------------------------------- load


@dataclass
class Sample:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int = 0
    errors: int = 0
    cpu_us_per_request: float | None = None
    foreign_cores: float | None = None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> Sample:
    def number(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{output}")
        return match.group(1)

    def percentile(p: int) -> float:
        match = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {p}% latency in wrk output:\n{output}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors = sum(int(g) for g in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Sample(
        requests=int(number(r"^\s*(\d+) requests in")),
        rps=float(number(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=errors,
    )


@dataclass
class Load:
    """wrk, or the labelled Python fallback when wrk is missing."""

    wrk: str | None
    threads: int

    def run(self, url: str, headers: list[str], connections: int, seconds: float) -> Sample:
        timeout = seconds + 60
        if self.wrk is not None:
            command = [self.wrk, f"-t{min(self.threads, connections)}", f"-c{connections}"]
            command += [f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
            for header in headers:
                command += ["-H", header]
            done = subprocess.run(
                [*command, url], capture_output=True, text=True, timeout=timeout, check=True
            )
            return parse_wrk(done.stdout)
        command = [sys.executable, str(BENCH / "loadgen.py"), url]
        command += ["--connections", str(connections), "--seconds", str(seconds)]
        for header in headers:
            command += ["--header", header]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
        data = json.loads(done.stdout)
        return Sample(
            requests=int(data["requests"]),
            rps=data["rps"],
            p50_ms=data["p50_ms"],
            p99_ms=data["p99_ms"],
            non2xx=int(data["non2xx"]),
            errors=int(data["errors"]),
        )


@dataclass
class Scenario:
    key: str
    label: str
    url: str
    headers: list[str]
    root_pid: int
    connections: int
    cpu_of: str  # whose CPU is measured
    samples: list[Sample] = field(default_factory=list)

    def median(self, attribute: str) -> float | None:
        values = [getattr(s, attribute) for s in self.samples]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine used so far (user+nice+system+irq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_busy_seconds() -> float:
    """CPU seconds used by this script and everything it started (live or reaped)."""
    live = sum(cpu_ticks(process_tree(os.getpid())).values()) / CLK_TCK
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return live + reaped.ru_utime + reaped.ru_stime


def measure(load: Load, scenario: Scenario, seconds: float) -> Sample:
    pids = process_tree(scenario.root_pid)
    before = cpu_ticks(pids)
    machine, own, started = machine_busy_seconds(), own_busy_seconds(), time.monotonic()
    sample = load.run(scenario.url, scenario.headers, scenario.connections, seconds)
    foreign = (machine_busy_seconds() - machine) - (own_busy_seconds() - own)
    sample.foreign_cores = max(0.0, foreign / (time.monotonic() - started))
    after = cpu_ticks(pids)
    ticks = sum(after[p] - before[p] for p in after if p in before)
    if sample.requests:
        sample.cpu_us_per_request = ticks / CLK_TCK / sample.requests * 1e6
    return sample


def _add_counts(
    total: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
) -> None:
    """Add each sidecar's counter increases from ``before`` to ``after`` to ``total``."""
    for name, counts in after.items():
        into = total.setdefault(name, {})
        for labels, value in counts.items():
            into[labels] = into.get(labels, 0.0) + value - before.get(name, {}).get(labels, 0.0)


# ---------------------------------------------------------------------------- the run


@dataclass
class Options:
    duration: float
    connections: int
    threads: int
    rounds: int
    warmup: float
    transfer_bytes: int
    revocations: int
    profile_seconds: float
    ws_idle: int
    only: set[str] | None
    skip: set[str]
    out: Path
    keep_work: bool
    quick: bool
    source: Path
    baseline: Path | None
    wait_idle: float
    keep_processes: bool = False


def git_state(path: Path) -> tuple[str, bool]:
    """Short commit of the checkout at ``path``, and whether its sidecar code differs."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=path)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "sidecar"))
    return commit, dirty


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.procs = Processes()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.work = BENCH / "work" / f"run-{stamp}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []
        self.sidecars: dict[str, Sidecar] = {}
        self.peer: subprocess.Popen[bytes] | None = None  # asgiproxy
        self.peer_port = 0
        self.unavailable: dict[str, str] = {}
        self.nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
        )
        self.load = Load(shutil.which("wrk"), options.threads)
        self.upstream_label = ""
        self.upstream_pid = 0
        self.api_key = ""
        self.jwt = mint(JwtConfig(algorithms=("HS256",), secret=JWT_SECRET), BENCH_USER, 7200)
        self.scenarios: list[Scenario] = []
        self.memory: list[dict[str, Any]] = []
        self.revocation: dict[str, Any] = {}
        self.websocket: dict[str, Any] = {}
        self.api_key_id = ""
        self.profile: str = ""
        self.profile_files: list[Path] = []
        self.instructions: dict[str, float] = {}
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", flush=True)

    def wanted(self, part: str) -> bool:
        return part not in self.o.skip

    # -- services ---------------------------------------------------------------

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
            [*command, *sidecar.args], sidecar.log, cwd=sidecar.source or self.o.source
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

    def create_key(self, sidecar: Sidecar) -> tuple[str, str]:
        response = httpx.post(
            sidecar.url + "/api/v1/api-keys/",
            headers={"Authorization": f"Bearer {self.jwt}"},
            json={"description": "bench"},
            timeout=10,
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating a key failed: {response.status_code} {response.text}")
        body = response.json()
        return body["api_key"], body["id"]

    def start_nginx_site(self, name: str, site: str, port: int) -> int:
        """A second nginx (1 worker) serving ``site`` (its ``server`` blocks) on ``port``;
        config and logs in the work dir. Its pid."""
        assert self.nginx is not None
        directory = self.work / name
        directory.mkdir()
        (directory / "site.conf").write_text(site)
        conf = directory / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
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

    def start_front_nginx(self, decisions_port: int, upstream: str) -> tuple[str, int]:
        """nginx with the README's forward-auth configuration (deploy/forward-auth/
        nginx.conf) in front of the upstream, asking the sidecar on ``decisions_port``."""
        port = free_port()
        site = (ROOT / "deploy" / "forward-auth" / "nginx.conf").read_text()
        site = site.replace("listen 8080;", f"listen 127.0.0.1:{port} backlog=4096;")
        site = site.replace("127.0.0.1:8081", f"127.0.0.1:{decisions_port}")
        site = site.replace("http://127.0.0.1:9000", upstream)
        return f"http://127.0.0.1:{port}", self.start_nginx_site("front-nginx", site, port)

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

    def deployment_sidecars(self, redis_url: str, upstream: str) -> None:
        """The sidecars of the deployment-mode scenarios, started only when selected:
        ``fa`` (forward-auth listener on) and ``assertion`` (identity assertion on)."""
        if self.selected("fa_decide") or self.selected("nginx_fa"):
            config = sidecar_config(upstream=upstream, redis_url=redis_url)
            config["forward_auth"] = {"enabled": True, "port": free_port()}
            self.sidecars["fa"] = self.start_sidecar(Sidecar("fa", config))
        if self.selected("assertion"):
            config = sidecar_config(upstream=upstream, redis_url=redis_url)
            config["identity"] = {
                "assertion": {"enabled": True, "private_key_file": self.assertion_key()}
            }
            self.sidecars["assertion"] = self.start_sidecar(Sidecar("assertion", config))

    def deployment_scenarios(self, upstream: str, key_header: str) -> list[Scenario]:
        c = self.o.connections
        out: list[Scenario] = []
        fa = self.sidecars.get("fa")
        if fa is not None:
            decisions = f"http://127.0.0.1:{fa.config['forward_auth']['port']}/"
            original = ["X-Original-Method: GET", f"X-Original-URI: {PATH}"]
            out.append(
                Scenario("fa_decide", "forward-auth decisions (nginx dialect), key cached, "
                         "rate limit on", decisions, [key_header, *original], fa.pid, c,
                         "sidecar")
            )  # fmt: skip
            if self.selected("nginx_fa"):
                if self.nginx is None:
                    self.unavailable["nginx_fa"] = "nginx not installed"
                else:
                    front_url, _ = self.start_front_nginx(
                        fa.config["forward_auth"]["port"], upstream
                    )
                    out.append(
                        Scenario("nginx_fa", "nginx auth_request (README config) + sidecar "
                                 "decisions -> upstream", front_url + PATH, [key_header],
                                 fa.pid, c, "sidecar (decisions only)")
                    )  # fmt: skip
        asserting = self.sidecars.get("assertion")
        if asserting is not None:
            out.append(
                Scenario("assertion", "as full, signed identity assertion on (EdDSA)",
                         asserting.url + PATH, [key_header], asserting.pid, c, "sidecar")
            )  # fmt: skip
        return out

    # -- throughput -------------------------------------------------------------

    def throughput(self, redis_url: str, upstream: str) -> None:
        c = self.o.connections
        full = Sidecar("full", sidecar_config(upstream=upstream, redis_url=redis_url))
        rl_off = Sidecar(
            "rl-off", sidecar_config(upstream=upstream, redis_url=redis_url, rate_limits=False)
        )
        cold = Sidecar(
            "cold", sidecar_config(upstream=upstream, redis_url=redis_url, cache_ttl=1e-6)
        )
        workers2 = Sidecar(
            "workers2",
            sidecar_config(upstream=upstream, redis_url=redis_url),
            args=("--workers", "2"),
        )
        self.log("starting sidecars: full, rl-off, cold")
        for sidecar in (full, rl_off, cold):
            self.sidecars[sidecar.name] = self.start_sidecar(sidecar)
        self.deployment_sidecars(redis_url, upstream)
        wait_for(
            "sidecar full /readyz",
            lambda: httpx.get(full.admin_url + "/readyz", timeout=2).status_code == 200,
        )
        self.api_key, self.api_key_id = self.create_key(full)
        key_header = f"X-API-Key: {self.api_key}"
        jwt_header = f"Authorization: Bearer {self.jwt}"
        self.check_rate_limit_headers(full, rl_off)
        if not self.wanted("workers2"):
            self.unavailable["workers2"] = "skipped (--skip workers2)"
        elif self.selected("workers2"):
            self.log("starting sidecar: serve --workers 2")
            try:
                self.start_sidecar(workers2)
                self.sidecars["workers2"] = workers2
            except RuntimeError as exc:
                self.unavailable["workers2"] = str(exc).splitlines()[0]
                self.log(f"workers2 not available: {self.unavailable['workers2']}")
                self.stop_sidecar(workers2)
        peer_url, peer_pid = self.start_asgiproxy(upstream)
        path = PATH
        baseline: list[Scenario] = []
        if self.o.baseline is not None and self.selected("baseline"):
            # Its own Redis database: an older build may not read today's key records.
            base = Sidecar(
                "baseline",
                sidecar_config(upstream=upstream, redis_url=redis_url.rsplit("/", 1)[0] + "/1"),
                source=self.o.baseline,
            )
            self.log(f"starting sidecar: baseline from {self.o.baseline}")
            self.sidecars["baseline"] = self.start_sidecar(base)
            base_key, _ = self.create_key(base)
            build = git_state(self.o.baseline)[0]
            baseline += [
                Scenario("baseline", f"as full, the build at {build}",
                         base.url + path, [f"X-API-Key: {base_key}"], base.pid, c, "sidecar"),
                Scenario("baseline_c1", f"as full_c1, the build at {build}",
                         base.url + path, [f"X-API-Key: {base_key}"], base.pid, 1, "sidecar"),
            ]  # fmt: skip
        candidates = [
            Scenario("direct", "direct to upstream", upstream + path, [], self.upstream_pid, c,
                     "upstream"),
            Scenario("full", "sidecar, API key (cached), full production path", full.url + path,
                     [key_header], full.pid, c, "sidecar"),
            Scenario("rl_off", "sidecar, API key (cached), rate limiting off", rl_off.url + path,
                     [key_header], rl_off.pid, c, "sidecar"),
            Scenario("jwt", "sidecar, JWT (HS256), full production path", full.url + path,
                     [jwt_header], full.pid, c, "sidecar"),
            Scenario("cold", "sidecar, API key cold (Redis lookup every request)",
                     cold.url + path, [key_header], cold.pid, c, "sidecar"),
            Scenario("workers2", "sidecar, full production path, serve --workers 2",
                     workers2.url + path, [key_header],
                     workers2.pid if workers2.process else 0, c, "sidecar (all workers)"),
            Scenario("asgiproxy", "asgiproxy (no auth, buffers bodies)", peer_url + path, [],
                     peer_pid, c, "asgiproxy"),
            Scenario("direct_c1", "direct to upstream, c1", upstream + path, [],
                     self.upstream_pid, 1, "upstream"),
            Scenario("full_c1", "sidecar full production path, c1", full.url + path,
                     [key_header], full.pid, 1, "sidecar"),
            Scenario("asgiproxy_c1", "asgiproxy, c1", peer_url + path, [], peer_pid, 1,
                     "asgiproxy"),
        ]  # fmt: skip
        candidates += baseline
        candidates += self.deployment_scenarios(upstream, key_header)
        if self.selected("nginx_pass"):
            if self.nginx is None:
                self.unavailable["nginx_pass"] = "nginx not installed"
            else:
                pass_url, pass_pid = self.start_pass_nginx(upstream)
                candidates += [
                    Scenario("nginx_pass", "nginx reverse proxy (keepalive upstream, "
                             "proxy_buffering off), no auth", pass_url + path, [], pass_pid, c,
                             "front nginx"),
                    Scenario("nginx_pass_c1", "nginx reverse proxy, c1", pass_url + path, [],
                             pass_pid, 1, "front nginx"),
                ]  # fmt: skip
        self.scenarios = [
            s
            for s in candidates
            if self.selected(s.key) and s.key.removesuffix("_c1") not in self.unavailable
        ]
        for scenario in self.scenarios:
            self.check_answers(scenario)
        self.wait_until_idle()
        self.log(f"warm-up: {self.o.warmup:g}s per scenario")
        for scenario in self.scenarios:
            self.load.run(scenario.url, scenario.headers, scenario.connections, self.o.warmup)
        cache_seen: dict[str, dict[str, float]] = {}
        hits_before = self.cache_counts()
        for round_no in range(self.o.rounds):
            if round_no and not self.o.keep_processes:
                _add_counts(cache_seen, hits_before, self.cache_counts())
                self.restart_servers(upstream)
                hits_before = self.cache_counts()
            shift = round_no % len(self.scenarios)
            order = self.scenarios[shift:] + self.scenarios[:shift]
            for scenario in order:
                sample = measure(self.load, scenario, self.o.duration)
                scenario.samples.append(sample)
                flag = f"  non-2xx {sample.non2xx}" if sample.non2xx else ""
                flag += f"  socket errors {sample.errors}" if sample.errors else ""
                self.log(
                    f"round {round_no + 1}/{self.o.rounds} {scenario.key:13s} "
                    f"{sample.rps:9.0f} req/s  p50 {sample.p50_ms:7.3f} ms  "
                    f"p99 {sample.p99_ms:7.3f} ms  cpu {sample.cpu_us_per_request or 0:6.1f} "
                    f"us/req  other load {sample.foreign_cores or 0:4.2f} cores{flag}"
                )
        _add_counts(cache_seen, hits_before, self.cache_counts())
        self.sanity_notes(cache_seen)
        if self.wanted("profile") and self.selected("full"):
            self.run_profile(full, key_header)
        for sidecar in list(self.sidecars.values()):
            self.stop_sidecar(sidecar)

    def restart_servers(self, upstream: str) -> None:
        """A fresh process for every Python server measured (the sidecars, asgiproxy), on
        the same ports, then the warm-up again. On some machines identical code runs up
        to ~20 % faster or slower from one process to the next (memory placement): with
        a process per round, the medians are not one process's luck."""
        self.log("round: restarting the sidecars and asgiproxy (fresh processes)")
        moved: dict[int, int] = {}
        for sidecar in self.sidecars.values():
            old = sidecar.pid
            self.stop_sidecar(sidecar)
            self.start_sidecar(sidecar)
            moved[old] = sidecar.pid
        if self.peer is not None:
            old = self.peer.pid
            self.procs.stop(self.peer)
            moved[old] = self.start_asgiproxy(upstream)[1]
        for scenario in self.scenarios:
            scenario.root_pid = moved.get(scenario.root_pid, scenario.root_pid)
        for scenario in self.scenarios:
            self.check_answers(scenario)
            self.load.run(scenario.url, scenario.headers, scenario.connections, self.o.warmup)

    def wait_until_idle(self) -> None:
        """Other work on the machine (a test suite, a build) competes for the same cores;
        wait a bounded time for it to stop, and say so in the report if it does not."""
        deadline = time.monotonic() + self.o.wait_idle
        while self.o.wait_idle > 0:
            machine, own, started = machine_busy_seconds(), own_busy_seconds(), time.monotonic()
            time.sleep(2.0)
            elapsed = time.monotonic() - started
            foreign = ((machine_busy_seconds() - machine) - (own_busy_seconds() - own)) / elapsed
            if foreign < 0.15:
                return
            if time.monotonic() > deadline:
                self.notes.append(
                    f"The machine was still busy with other work ({foreign:.2f} cores) after "
                    f"waiting {self.o.wait_idle:g} s for it to be idle; the run went ahead."
                )
                return
            self.log(f"waiting for other work to finish: {foreign:.2f} cores busy")

    def selected(self, key: str) -> bool:
        return self.o.only is None or key.removesuffix("_c1") in self.o.only

    def check_answers(self, scenario: Scenario) -> None:
        headers = dict(h.split(": ", 1) for h in scenario.headers)
        try:
            response = httpx.get(scenario.url, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"scenario {scenario.key}: {scenario.url}: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeError(
                f"{scenario.key}: GET {scenario.url} answered {response.status_code}: "
                f"{response.text[:200]}"
            )

    def check_rate_limit_headers(self, full: Sidecar, rl_off: Sidecar) -> None:
        headers = {"X-API-Key": self.api_key}
        on = httpx.get(full.url + PATH, headers=headers, timeout=10).headers
        off = httpx.get(rl_off.url + PATH, headers=headers, timeout=10).headers
        if "x-ratelimit-limit" not in on:
            self.notes.append(
                "Rate limiting ON sent no `X-RateLimit-*` headers: the limiter is not "
                "implemented in this build (a no-op), so `full` and `rl_off` do the same work."
            )
        else:
            self.notes.append(
                f"Rate limiting ON answered `X-RateLimit-Limit: {on['x-ratelimit-limit']}`; "
                f"OFF sent {'no' if 'x-ratelimit-limit' not in off else 'some'} rate-limit "
                "headers."
            )

    def cache_counts(self) -> dict[str, dict[str, float]]:
        return {
            name: sidecar.metric("sidecar_key_cache_total")
            for name, sidecar in self.sidecars.items()
        }

    def sanity_notes(self, seen: dict[str, dict[str, float]]) -> None:
        for name, counts in seen.items():
            hits = counts.get('{result="hit"}', 0)
            miss = counts.get('{result="miss"}', 0)
            if hits + miss:
                self.notes.append(
                    f"Key cache on sidecar `{name}` during the rounds: {hits:.0f} hits, "
                    f"{miss:.0f} misses ({100 * hits / (hits + miss):.1f} % hits)."
                )
        full = self.sidecars.get("full")
        if full is not None:
            lines = sum(1 for line in full.log.open("rb") if b'"request_id"' in line)
            self.notes.append(
                f"Access log of sidecar `full`: {lines} JSON lines written to a file "
                "(access log ON)."
            )

    def usage_note(self, redis_url: str, upstream: str) -> None:
        """The usage counts of the bench key, read once the throughput sidecars have
        stopped (and so flushed them), against the requests wrk completed with it."""
        reader = self.start_sidecar(
            Sidecar("usage", sidecar_config(upstream=upstream, redis_url=redis_url))
        )
        response = httpx.get(
            f"{reader.url}/api/v1/api-keys/{self.api_key_id}/usage",
            params={"days": 2},
            headers={"Authorization": f"Bearer {self.jwt}"},
            timeout=10,
        )
        self.stop_sidecar(reader)
        if response.status_code != 200:
            self.notes.append(f"Usage counts of the bench key: {response.status_code}.")
            return
        measured = sum(
            x.requests
            for s in self.scenarios
            if any(h.startswith("X-API-Key:") for h in s.headers)
            for x in s.samples
        )
        self.notes.append(
            f"Usage counting: the bench key's usage shows {response.json()['total_requests']:,} "
            f"requests; the key-authenticated wrk runs of the measured rounds alone completed "
            f"{measured:,} (warm-ups, checks and the profile run come on top)."
        )

    def run_profile(self, full: Sidecar, key_header: str) -> None:
        if not PY_SPY.exists():
            self.notes.append("Profile skipped: py-spy not installed in bench/.venv.")
            return
        seconds = self.o.profile_seconds
        stamp = self.o.out.stem
        raw = self.work / "profile.raw.txt"
        svg = self.o.out.parent / f"profile-{stamp}.svg"
        self.log(f"profiling sidecar full under c{self.o.connections} load for {seconds:g}s")
        base = [str(PY_SPY), "record", "--pid", str(full.pid), "--duration", f"{seconds:g}"]
        base += ["--rate", "100", "--nonblocking", "--full-filenames"]
        with contextlib.ExitStack() as stack:
            spies = [
                stack.enter_context(
                    subprocess.Popen(
                        [*base, "--format", fmt, "-o", str(path)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                for fmt, path in (("raw", raw), ("flamegraph", svg))
            ]
            sample = self.load.run(full.url + PATH, [key_header], self.o.connections, seconds + 2)
            for spy in spies:
                spy.wait(30)
        if not raw.exists():
            self.notes.append("Profile failed: py-spy wrote nothing (ptrace not permitted?).")
            return
        self.profile = (
            f"py-spy {self._version([str(PY_SPY), '--version'])}, 100 Hz, {seconds:g}s, "
            f"sidecar `full` under wrk c{self.o.connections} ({sample.rps:.0f} req/s while "
            "sampled).\n\n" + profile_markdown(summarise(raw.read_text()))
        )
        if svg.exists():
            self.profile_files.append(svg)

    # -- instructions ---------------------------------------------------------------

    def instruction_test(self, redis_url: str, upstream: str) -> None:
        """Instructions per request of the full path (bench/instructions.py): this
        build, this build with the identity assertion on, and the --baseline build, each
        in a sidecar of its own under callgrind."""
        missing = instructions.available()
        if missing is not None:
            self.unavailable["instructions"] = missing
            return
        assertion = {"assertion": {"enabled": True, "private_key_file": self.assertion_key()}}
        builds: list[tuple[str, Path, dict[str, Any]]] = [
            (_THIS_BUILD, self.o.source, {}),
            (_ASSERTION_ON, self.o.source, {"identity": assertion}),
        ]
        if self.o.baseline is not None:
            label = f"--baseline ({git_state(self.o.baseline)[0]})"
            builds.append((label, self.o.baseline, {}))
        for index, (label, source, extra) in enumerate(builds):
            database = redis_url.rsplit("/", 1)[0] + f"/{2 + index}"
            config = sidecar_config(upstream=upstream, redis_url=database)
            sidecar = Sidecar(f"callgrind-{index}", {**config, **extra}, source=source)
            out = self.work / f"callgrind-{index}.out"
            self.log(f"instructions per request under callgrind: {label}")
            self.start_sidecar(sidecar, timeout=180, wrapper=tuple(instructions.wrapper(out)))
            key, _ = self.create_key(sidecar)
            count = instructions.per_request(
                sidecar.pid, out, sidecar.port, PATH, key, INSTRUCTION_REQUESTS
            )
            self.instructions[label] = count
            self.stop_sidecar(sidecar)

    def _instruction_table(self) -> list[str]:
        if not self.instructions:
            return []
        out = [
            "## Instructions per request (callgrind)",
            "",
            f"Full production path, {INSTRUCTION_REQUESTS:,} sequential requests (c1) after a "
            f"warm-up of {instructions.WARM_UP}, user-space instructions of the sidecar "
            "process: repeatable to ~0.1 % where timings vary by ~20 % between processes "
            "(bench/instructions.py).",
            "",
            "| build | instructions per request |",
            "|---|---:|",
        ]
        out += [f"| {label} | {count:,.0f} |" for label, count in self.instructions.items()]
        this = self.instructions.get(_THIS_BUILD)
        signed = self.instructions.get(_ASSERTION_ON)
        baseline = next(
            (n for k, n in self.instructions.items() if k not in (_THIS_BUILD, _ASSERTION_ON)),
            None,
        )
        if this and signed:
            out += ["", f"Identity assertion on / off: {signed / this:.3f}x."]
        if this and baseline:
            out += ["", f"This build / baseline: {this / baseline:.3f}x."]
        return [*out, ""]

    # -- memory -------------------------------------------------------------------

    def memory_test(self, redis_url: str) -> None:
        size = self.o.transfer_bytes
        port = free_port()
        self.procs.start(
            [sys.executable, str(BENCH / "upstreams.py"), "bulk", "--port", str(port)],
            self.work / "bulk-upstream.log",
        )
        wait_for("bulk upstream", lambda: port_open(port))
        upstream = f"http://127.0.0.1:{port}"
        source = self.work / "upload.bin"
        with open(source, "wb") as handle:
            handle.truncate(size)  # sparse: reads back as zeros without using disk
        key_header = f"X-API-Key: {self.api_key}"
        for direction in ("upload", "download"):
            sidecar = self.start_sidecar(
                Sidecar(f"mem-{direction}", sidecar_config(upstream=upstream, redis_url=redis_url))
            )
            curl = ["curl", "-sS", "--max-time", "300", "-H", key_header]
            curl += ["-w", "%{http_code} %{size_upload} %{size_download} %{time_total}"]
            small = subprocess.run(
                [*curl, "-o", "/dev/null", sidecar.url + "/download?bytes=1024"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            baseline = vm_kib(sidecar.pid, "VmHWM")
            body = self.work / f"{direction}.out"
            if direction == "upload":
                # curl sends "Expect: 100-continue" for a body this large, as clients do.
                command = [*curl, "-X", "POST", "-T", str(source)]
                command += ["-H", "Content-Type: application/octet-stream"]
                command += ["-o", str(body), sidecar.url + "/upload"]
            else:
                command = [*curl, "-o", "/dev/null", f"{sidecar.url}/download?bytes={size}"]
            self.log(f"memory: {size / MIB:.0f} MiB {direction} through a fresh sidecar")
            done = subprocess.run(command, capture_output=True, text=True, timeout=320, check=False)
            peak = vm_kib(sidecar.pid, "VmHWM")
            code, up, down, seconds = (done.stdout.split() + ["?"] * 4)[:4]
            moved = float(up if direction == "upload" else down) if code != "?" else 0.0
            ok = code == "200" and int(moved) == size
            if direction == "upload" and ok:
                ok = json.loads(body.read_text()).get("received") == size
            self.memory.append(
                {
                    "direction": direction,
                    "status": code,
                    "bytes": int(moved),
                    "ok": ok and small.returncode == 0,
                    "seconds": float(seconds) if seconds != "?" else None,
                    "baseline_mib": baseline / 1024,
                    "peak_mib": peak / 1024,
                    "error": done.stderr.strip()[:200],
                }
            )
            self.stop_sidecar(sidecar)
        source.unlink()

    # -- websocket ------------------------------------------------------------------

    def websocket_test(self, redis_url: str) -> None:
        """Relay throughput (one direction, client -> upstream) direct and through a
        sidecar, interleaved over the rounds; then idle sockets held through a fresh
        sidecar against its RSS."""
        port = free_port()
        self.procs.start(
            [sys.executable, str(BENCH / "upstreams.py"), "ws", "--port", str(port)],
            self.work / "ws-upstream.log",
        )
        wait_for("ws upstream", lambda: port_open(port))
        config = sidecar_config(upstream=f"http://127.0.0.1:{port}", redis_url=redis_url)
        count = self.o.ws_idle
        config["server"]["max_websockets"] = count + 16
        sidecar = self.start_sidecar(Sidecar("ws", config))
        headers = {"X-API-Key": self.api_key}
        relayed = sidecar.url.replace("http://", "ws://") + WS_PATH
        direct = f"ws://127.0.0.1:{port}{WS_PATH}"

        # Idle sockets first, on the fresh process, after one socket has warmed the path.
        ws_client.throughput(relayed, headers, 0.2, WS_FRAME)
        self.log(f"websocket: {count} idle sockets through a fresh sidecar")
        before = vm_kib(sidecar.pid, "VmRSS")
        after, opened = ws_client.hold_idle(
            relayed, headers, count, lambda: vm_kib(sidecar.pid, "VmRSS")
        )
        added = max(after - before, 1) * 1024
        self.websocket["idle"] = {
            "count": opened,
            "before_mib": before / 1024,
            "after_mib": after / 1024,
            "kib_per_socket": added / 1024 / opened,
            "per_100mb": opened * 100e6 / added,
        }

        seconds = self.o.duration
        runs: dict[str, list[dict[str, float]]] = {"direct": [], "sidecar": []}
        self.log(
            f"websocket: {seconds:g} s of {WS_FRAME // 1024} KiB binary messages, "
            f"{self.o.rounds} round(s), direct and through the sidecar"
        )
        for _ in range(self.o.rounds):
            for path, url in (("direct", direct), ("sidecar", relayed)):
                ticks = cpu_ticks([sidecar.pid])
                sent, received, took = ws_client.throughput(url, headers, seconds, WS_FRAME)
                cpu = (cpu_ticks([sidecar.pid])[sidecar.pid] - ticks[sidecar.pid]) / CLK_TCK
                if received != sent:
                    raise RuntimeError(f"websocket {path}: sent {sent} bytes, {received} arrived")
                runs[path].append(
                    {
                        "mib_s": received / MIB / took,
                        "cpu_ms_per_mib": cpu * 1000 / (received / MIB),
                    }
                )
                self.log(f"websocket {path}: {received / MIB / took:.0f} MiB/s")
        self.websocket["throughput"] = runs
        self.stop_sidecar(sidecar)

    # -- revocation -----------------------------------------------------------------

    def revocation_test(self, redis_url: str, upstream: str) -> None:
        count = self.o.revocations
        a = self.start_sidecar(
            Sidecar("revoke-a", sidecar_config(upstream=upstream, redis_url=redis_url))
        )
        b = self.start_sidecar(
            Sidecar("revoke-b", sidecar_config(upstream=upstream, redis_url=redis_url))
        )
        self.log(f"revocation: {count} keys created on A, warmed on B, revoked on A")
        api = httpx.Client(
            base_url=a.url, headers={"Authorization": f"Bearer {self.jwt}"}, timeout=10
        )
        poll = http.client.HTTPConnection("127.0.0.1", b.port, timeout=5)
        delays: list[float] = []
        polls: list[int] = []
        failures = 0
        hits_before = b.metric("sidecar_key_cache_total").get('{result="hit"}', 0)

        def get(key: str) -> int:
            poll.request("GET", PATH, headers={"X-API-Key": key})
            response = poll.getresponse()
            response.read()
            return response.status

        time.sleep(1.0)  # B's revocation subscription is up (it PINGs every second)
        with api:
            for _ in range(count):
                created = api.post("/api/v1/api-keys/", json={"description": "revoke"})
                key, key_id = created.json()["api_key"], created.json()["id"]
                if get(key) != 200 or get(key) != 200:
                    raise RuntimeError("revocation test: a new key was not accepted by B")
                revoked = api.delete(f"/api/v1/api-keys/{key_id}")
                revoked_at = time.perf_counter()
                if revoked.status_code != 200:
                    raise RuntimeError(f"revoking failed: {revoked.status_code}")
                deadline = revoked_at + 5.0
                attempts = 0
                while True:
                    attempts += 1
                    status = get(key)
                    now = time.perf_counter()
                    if status == 401:
                        delays.append(now - revoked_at)
                        polls.append(attempts)
                        break
                    if now > deadline:
                        failures += 1
                        delays.append(math.inf)
                        break
        poll.close()
        hits = b.metric("sidecar_key_cache_total").get('{result="hit"}', 0) - hits_before
        delays.sort()
        self.revocation = {
            "count": count,
            "median_ms": statistics.median(delays) * 1000,
            "p99_ms": delays[max(0, math.ceil(0.99 * len(delays)) - 1)] * 1000,
            "max_ms": delays[-1] * 1000,
            "first_poll_401": sum(1 for p in polls if p == 1),
            "max_polls": max(polls) if polls else 0,
            "failures": failures,
            "b_cache_hits": hits,
        }
        self.stop_sidecar(a)
        self.stop_sidecar(b)

    # -- report -----------------------------------------------------------------

    @staticmethod
    def _version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else "?"

    def report(self) -> str:
        o = self.o
        commit, dirty = git_state(o.source)
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        )
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        peer = subprocess.run(
            [str(BENCH_PYTHON), "-c",
             "import importlib.metadata as m;"
             "print(', '.join(f'{p} {m.version(p)}' for p in "
             "('asgiproxy','aiohttp','uvicorn','uvloop','httptools','starlette')))"],
            capture_output=True, text=True,
        ).stdout.strip() if BENCH_PYTHON.exists() else "bench/.venv missing"  # fmt: skip
        ours = ", ".join(
            f"{p} {_version_of(p)}"
            for p in ("uvicorn", "uvloop", "httptools", "redis", "hiredis",
                      "prometheus-client", "orjson")
        )  # fmt: skip
        load_tool = (
            self._version([self.load.wrk, "--version"])
            if self.load.wrk
            else "FALLBACK: bench/loadgen.py (Python; wrk not installed)"
        )
        lines = [
            f"# Sidecar benchmark — {datetime.date.today().isoformat()}, commit {commit}"
            + (" (with uncommitted changes under sidecar/)" if dirty else ""),
            "",
            "## Machine and tools",
            "",
            f"- CPU: {cpu}; nproc {os.cpu_count()}; memory {int(memory) // 1024} MiB; "
            f"kernel {platform.release()}; Python {platform.python_version()}",
            f"- load generator: {load_tool}",
            f"- upstream: {self.upstream_label}; "
            + (self._version([self.nginx, "-v"]) if self.nginx else "nginx not installed"),
            f"- redis: {self._version([find_binary(), '--version'])}",
            f"- curl: {self._version(['curl', '--version'])}",
            f"- sidecar stack (.venv): {ours}",
            f"- peer stack (bench/.venv): {peer}",
            "",
            "## Parameters",
            "",
            f"- sidecar code: `{o.source}`",
            *(
                [f"- baseline build (`baseline`): `{o.baseline}` at {git_state(o.baseline)[0]}"]
                if o.baseline
                else []
            ),
            f"- `wrk -t{o.threads} -c{o.connections} -d{o.duration:g}s --latency --timeout 5s` "
            f"(c1 rows: `-t1 -c1`), GET `{PATH}`, warm-up {o.warmup:g}s per scenario, "
            f"{o.rounds} interleaved round(s) (order rotated each round), medians reported"
            + (
                ""
                if o.keep_processes or o.rounds < 2
                else "; fresh sidecar and asgiproxy processes for each round (warmed up again)"
            )
            + (" — QUICK MODE (smoke run, not for comparison)" if o.quick else ""),
            "- every server is one process on 127.0.0.1 unless noted; sidecar: "
            "`python -m sidecar serve` (uvicorn, uvloop + httptools, 1 worker), "
            "access log ON (JSON lines to a file), metrics ON, rate limits "
            f"{NEVER_LIMITING['requests']} per {NEVER_LIMITING['per_seconds']} s (never "
            "trigger), key cache TTL 60 s (cold: 1 µs)",
            "- asgiproxy 0.2.0 under uvicorn (uvloop + httptools, 1 worker), semaphore "
            "and aiohttp pool raised from 20/100 to 256 (= sidecar `upstream.pool_size`)",
            "- CPU µs/req: utime+stime of the measured server's process tree "
            "(/proc/<pid>/stat) over the run, divided by requests completed",
            "",
        ]
        lines += self._targets_table()
        lines += self._throughput_tables()
        lines += self._ratio_table()
        lines += self._memory_table()
        lines += self._websocket_tables()
        lines += self._revocation_table()
        lines += self._instruction_table()
        if self.profile:
            lines += ["## Profile of the full production path (API key, cached)", ""]
            lines += [self.profile, ""]
            lines += [f"Flame graph: `{_shown(p)}`" for p in self.profile_files]
            lines += [""]
        if self.notes or self.unavailable:
            lines += ["## Notes", ""]
            lines += [f"- {note}" for note in self.notes]
            lines += [f"- `{k}`: not available — {v}" for k, v in self.unavailable.items()]
            lines += [""]
        return "\n".join(lines)

    def _throughput_tables(self) -> list[str]:
        if not self.scenarios:
            return []
        out = ["## Throughput and latency (medians)", ""]
        for title, wanted in (("c" + str(self.o.connections), False), ("c1", True)):
            rows = [s for s in self.scenarios if s.key.endswith("_c1") == wanted]
            if not rows:
                continue
            out += [
                f"### {title}",
                "",
                "| scenario | req/s | req/s min..max | p50 ms | p99 ms | CPU µs/req | "
                "CPU of | non-2xx/errors | other load (cores) |",
                "|---|---:|---:|---:|---:|---:|---|---:|---:|",
            ]
            for s in rows:
                rps = [x.rps for x in s.samples]
                cpu = s.median("cpu_us_per_request")
                bad = sum(x.non2xx + x.errors for x in s.samples)
                out.append(
                    f"| {s.key}: {s.label} | {s.median('rps') or 0:,.0f} | "
                    f"{min(rps):,.0f}..{max(rps):,.0f} | {s.median('p50_ms') or 0:.3f} | "
                    f"{s.median('p99_ms') or 0:.3f} | "
                    f"{'-' if cpu is None else f'{cpu:.1f}'} | {s.cpu_of} | {bad} | "
                    f"{s.median('foreign_cores') or 0:.2f} |"
                )
            out.append("")
        busiest = max(
            (x.foreign_cores or 0 for s in self.scenarios for x in s.samples), default=0.0
        )
        out += [
            "Other load = CPU used on the machine by processes this run did not start, in "
            "cores, during the wrk runs (median). "
            + (
                f"**Up to {busiest:.2f} cores were busy with other work during some runs: "
                "treat absolute numbers with care; ratios and CPU µs/req are steadier.**"
                if busiest > 0.25
                else "The machine was otherwise idle."
            ),
            "",
        ]
        return out

    def _ratio(self, a: str, b: str) -> tuple[float | None, str]:
        """req/s of scenario ``a`` over ``b`` (medians), and the per-round spread (or why
        there is no value)."""
        by = {s.key: s for s in self.scenarios}
        if a not in by or b not in by:
            missing = a if a not in by else b
            return None, self.unavailable.get(missing.removesuffix("_c1"), "not measured")
        per_round = [x.rps / y.rps for x, y in zip(by[a].samples, by[b].samples, strict=True)]
        spread = f"per round {min(per_round):.2f}..{max(per_round):.2f}"
        return (by[a].median("rps") or 0) / (by[b].median("rps") or 1), spread

    def _ratio_table(self) -> list[str]:
        by = {s.key: s for s in self.scenarios}
        ratio = self._ratio
        rows: list[tuple[str, float | None, str, str, bool | None]] = []
        for label, a, b, target in (
            ("full production path / asgiproxy (req/s, c32)", "full", "asgiproxy", 1.0),
            ("rate limiting off / asgiproxy (req/s)", "rl_off", "asgiproxy", 1.2),
            ("serve --workers 2 / 1 worker (req/s, full path)", "workers2", "full", 1.3),
            ("rate limiting on / off (req/s)", "full", "rl_off", None),
            ("JWT / API key cached (req/s)", "jwt", "full", None),
            ("cold key / cached key (req/s)", "cold", "full", None),
            (
                "forward-auth decisions / full proxied requests (req/s, c32)",
                "fa_decide",
                "full",
                None,
            ),
            (
                "nginx + auth_request + sidecar / sidecar as the proxy (req/s)",
                "nginx_fa",
                "full",
                None,
            ),
            ("identity assertion on / off (req/s, full path)", "assertion", "full", 0.95),
            ("full production path / nginx pass-through (req/s, c32)", "full", "nginx_pass", 0.15),
            (
                "full production path, this build / --baseline build (req/s)",
                "full",
                "baseline",
                0.97,
            ),
        ):
            value, detail = ratio(a, b)
            goal = "" if target is None else f"≥ {target:g}x"
            if a == "full" and b == "asgiproxy":
                goal += " (stretch ≥ 1.3x)"
            passed = None if value is None or target is None else value >= target
            rows.append((label, value, detail, goal, passed))
        for label, a, b, most in (
            ("latency added at c1, p50 (ms): full path - direct", "full_c1", "direct_c1", 0.35),
            ("c1 p50 (ms): this build - --baseline build", "full_c1", "baseline_c1", None),
        ):
            if a not in by or b not in by:
                continue
            added = (by[a].median("p50_ms") or 0) - (by[b].median("p50_ms") or 0)
            per_round = [
                x.p50_ms - y.p50_ms for x, y in zip(by[a].samples, by[b].samples, strict=True)
            ]
            spread = f"per round {min(per_round):.3f}..{max(per_round):.3f}"
            goal = "" if most is None else f"≤ {most:g} ms"
            rows.append((label, added, spread, goal, None if most is None else added <= most))
        if not rows:
            return []
        out = [
            "## Ratios (within this run)",
            "",
            "| ratio | value | spread | target | met |",
            "|---|---:|---|---|---|",
        ]
        for label, value, detail, goal, passed in rows:
            shown = "n/a" if value is None else (f"{value:.3f} ms" if "ms" in label else
                                                 f"{value:.2f}x")  # fmt: skip
            mark = "" if passed is None else ("yes" if passed else "**no**")
            out.append(f"| {label} | {shown} | {detail} | {goal} | {mark} |")
        return [*out, ""]

    def _targets_table(self) -> list[str]:
        """Issue 15's acceptance table: every figure from this run, and whether it is met."""
        by = {s.key: s for s in self.scenarios}
        rows: list[tuple[str, str, str, str, bool | None]] = []

        def missing(*keys: str) -> str:
            absent = next(k for k in keys if k not in by)
            return self.unavailable.get(absent.removesuffix("_c1"), f"`{absent}` not measured")

        def p50(key: str) -> float:
            return by[key].median("p50_ms") or 0.0

        def spread(a: str, b: str, of: Callable[[Sample, Sample], float]) -> str:
            per_round = [of(x, y) for x, y in zip(by[a].samples, by[b].samples, strict=True)]
            return f"per round {min(per_round):.3f}..{max(per_round):.3f}"

        measure, target = "c1 p50, sidecar full path", "below asgiproxy's c1 p50"
        if "full_c1" in by and "asgiproxy_c1" in by:
            rows.append(
                (
                    measure,
                    target,
                    f"{p50('full_c1'):.3f} ms vs {p50('asgiproxy_c1'):.3f} ms",
                    spread("full_c1", "asgiproxy_c1", lambda x, y: x.p50_ms - y.p50_ms)
                    + " ms (difference)",
                    p50("full_c1") < p50("asgiproxy_c1"),
                )
            )
        else:
            rows.append((measure, target, "n/a", missing("full_c1", "asgiproxy_c1"), None))
        measure, target = "c1 latency added over direct, p50", "≤ 0.25 ms"
        if "full_c1" in by and "direct_c1" in by:
            added = p50("full_c1") - p50("direct_c1")
            rows.append(
                (
                    measure,
                    target,
                    f"{added:.3f} ms",
                    spread("full_c1", "direct_c1", lambda x, y: x.p50_ms - y.p50_ms) + " ms",
                    added <= 0.25,
                )
            )
        else:
            rows.append((measure, target, "n/a", missing("full_c1", "direct_c1"), None))
        for measure, a, b, least in (
            ("c32 full path / asgiproxy (req/s)", "full", "asgiproxy", 2.0),
            ("c32 full path / nginx pass-through (req/s)", "full", "nginx_pass", 0.15),
            (
                "forward-auth decisions / full proxied requests (req/s, c32)",
                "fa_decide",
                "full",
                1.5,
            ),
        ):
            value, detail = self._ratio(a, b)
            shown = "n/a" if value is None else f"{value:.2f}x"
            met = None if value is None else value >= least
            rows.append((measure, f"≥ {least:g}x", shown, detail, met))
        value, detail = self._ratio("assertion", "full")
        signed, plain = self.instructions.get(_ASSERTION_ON), self.instructions.get(_THIS_BUILD)
        if value is not None and signed and plain:
            detail += f"; instructions per request +{(signed / plain - 1) * 100:.1f} % (callgrind)"
        rows.append(
            (
                "throughput cost of the identity assertion (1 - assertion/full req/s)",
                "≤ 5 %",
                "n/a" if value is None else f"{(1 - value) * 100:.1f} %",
                detail if value is None else f"assertion / full {detail}",
                None if value is None else 1 - value <= 0.05,
            )
        )
        runs = self.websocket.get("throughput", {}).get("sidecar", [])
        if runs:
            speed = statistics.median(r["mib_s"] for r in runs)
            speeds = [r["mib_s"] for r in runs]
            rows.append(
                (
                    "WebSocket relay, client -> upstream through the sidecar",
                    "≥ 50 MiB/s",
                    f"{speed:.0f} MiB/s",
                    f"per round {min(speeds):.0f}..{max(speeds):.0f}",
                    speed >= 50,
                )
            )
        else:
            rows.append(("WebSocket relay", "≥ 50 MiB/s", "n/a", "not measured", None))
        idle = self.websocket.get("idle")
        rows.append(
            (
                "open idle WebSockets per 100 MB of RSS",
                "informational",
                "n/a" if not idle else f"{idle['per_100mb']:,.0f}",
                "not measured"
                if not idle
                else f"{idle['count']} sockets, {idle['kib_per_socket']:.1f} KiB each",
                None,
            )
        )
        size = f"{self.o.transfer_bytes / MIB:.0f} MiB"
        for direction in ("upload", "download"):
            m = next((m for m in self.memory if m["direction"] == direction), None)
            if m is None:
                rows.append(
                    (f"peak RSS, {size} {direction}", "< 100 MB", "n/a", "not measured", None)
                )
                continue
            peak_mb = m["peak_mib"] * MIB / 1e6
            rows.append(
                (
                    f"peak RSS, {size} {direction}",
                    "< 100 MB",
                    f"{peak_mb:.1f} MB",
                    "transfer ok" if m["ok"] else f"transfer failed: {m['status']}",
                    m["ok"] and peak_mb < 100,
                )
            )
        r = self.revocation
        rows.append(
            (
                "revocation across instances, p99",
                "< 100 ms",
                "n/a" if not r else f"{r['p99_ms']:.2f} ms",
                "not measured" if not r else f"{r['count']} revocations, max {r['max_ms']:.2f} ms",
                None if not r else r["p99_ms"] < 100,
            )
        )
        out = [
            "## Targets (issue 15's acceptance table)",
            "",
            "`full` is the full production path *with usage counting*: every key-authenticated "
            "request is counted per key and UTC day (sidecar/usage.py, flushed to Redis in one "
            "batch every `auth.api_keys.last_used_flush_seconds`); there is no switch to turn "
            "it off, so every sidecar row includes it."
            + (" **Quick mode: smoke numbers, not a verdict.**" if self.o.quick else ""),
            "",
            "| measure | target | this run | detail | met |",
            "|---|---|---:|---|---|",
        ]
        for measure, target, shown, detail, met in rows:
            mark = "" if met is None else ("yes" if met else "**no**")
            out.append(f"| {measure} | {target} | {shown} | {detail} | {mark} |")
        return [*out, ""]

    def _memory_table(self) -> list[str]:
        if not self.memory:
            return []
        size = self.o.transfer_bytes
        out = [
            f"## Peak RSS while proxying one {size / MIB:.0f} MiB transfer",
            "",
            "Fresh sidecar process for each (full production config; upstream: "
            "bench/upstreams.py `bulk`, which discards uploads and streams downloads); "
            "client: curl streaming from a sparse file / to /dev/null. Peak = VmHWM of the "
            "sidecar process after the transfer; baseline = VmHWM after start-up and one "
            "small request. Target: < 100 MB each.",
            "",
            "| transfer | status | bytes | seconds | MiB/s | baseline VmHWM MiB | "
            "peak VmHWM MiB | met |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for m in self.memory:
            speed = m["bytes"] / MIB / m["seconds"] if m["seconds"] else 0
            met = m["ok"] and m["peak_mib"] * MIB < 100e6
            out.append(
                f"| {m['direction']} | {m['status']} | {m['bytes']:,} | {m['seconds'] or 0:.1f} "
                f"| {speed:.0f} | {m['baseline_mib']:.1f} | {m['peak_mib']:.1f} | "
                f"{'yes' if met else '**no**'} |"
            )
            if m["error"]:
                out.append(f"|  | curl: {m['error']} | | | | | | |")
        return [*out, ""]

    def _websocket_tables(self) -> list[str]:
        ws = self.websocket
        if not ws:
            return []
        out = [
            "## WebSocket relay",
            "",
            f"Sink upstream: bench/upstreams.py `ws` (websockets, no compression, no pings). "
            f"Client (websockets, in the bench process) sends {WS_FRAME // 1024} KiB binary "
            f"messages over one socket for {self.o.duration:g} s, authenticated with the bench "
            "key; MiB/s = bytes the upstream counted / (first send until its count came back). "
            "`direct` = client straight to the upstream: when it is not clearly faster than "
            "`sidecar`, the Python client is the limit and the sidecar figure is a floor; the "
            "sidecar's CPU per MiB is the steadier number. Medians over "
            f"{self.o.rounds} interleaved round(s). Target through the sidecar: ≥ 50 MiB/s.",
            "",
            "| path | MiB/s | min..max | sidecar CPU ms per MiB |",
            "|---|---:|---:|---:|",
        ]
        for path, runs in ws.get("throughput", {}).items():
            speeds = [r["mib_s"] for r in runs]
            cpu = statistics.median(r["cpu_ms_per_mib"] for r in runs)
            out.append(
                f"| {path} | {statistics.median(speeds):.0f} | {min(speeds):.0f}..{max(speeds):.0f}"
                f" | {'-' if path == 'direct' else f'{cpu:.2f}'} |"
            )
        idle = ws.get("idle")
        if idle:
            out += [
                "",
                f"Idle sockets: a fresh sidecar (`server.max_websockets` raised to "
                f"{self.o.ws_idle + 16}) after one warm-up socket; VmRSS before opening them "
                "and while all are open (each then answered a ping through the sidecar).",
                "",
                "| open idle sockets | VmRSS before MiB | VmRSS open MiB | KiB per socket | "
                "sockets per 100 MB of RSS |",
                "|---:|---:|---:|---:|---:|",
                f"| {idle['count']} | {idle['before_mib']:.1f} | {idle['after_mib']:.1f} | "
                f"{idle['kib_per_socket']:.1f} | {idle['per_100mb']:,.0f} |",
            ]
        return [*out, ""]

    def _revocation_table(self) -> list[str]:
        r = self.revocation
        if not r:
            return []
        return [
            "## Revocation propagation across two instances",
            "",
            f"Two sidecars on one Redis. {r['count']} times: create a key through A's API, "
            "call B with it twice (200; cached on B), revoke it with `DELETE` on A, then "
            "call B back-to-back on one keep-alive connection until it answers 401. "
            "Delay = first 401 received - DELETE response received (includes one request "
            "round trip to B).",
            "",
            "| median ms | p99 ms | max ms | 401 on first call | most calls needed | "
            "not revoked within 5 s | targets |",
            "|---:|---:|---:|---:|---:|---:|---|",
            f"| {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | "
            f"{r['first_poll_401']}/{r['count']} | {r['max_polls']} | {r['failures']} | "
            f"max < 1000 ms: {'yes' if r['max_ms'] < 1000 else '**no**'}; p99 < 100 ms: "
            f"{'yes' if r['p99_ms'] < 100 else '**no**'} |",
            "",
            f"B served {r['b_cache_hits']:.0f} requests from its key cache meanwhile (the "
            "second warm-up call each time), so each revocation had to evict a cached key.",
            "",
        ]

    # -- main ---------------------------------------------------------------------

    def run(self) -> int:
        self.log(f"work dir {_shown(self.work)}")
        if self.load.wrk is None:
            self.log("wrk not found: using the Python fallback load generator (labelled)")
        redis_url = self.start_redis()
        upstream = self.start_upstream()
        self.log(f"upstream: {self.upstream_label} at {upstream}; redis at {redis_url}")
        self.throughput(redis_url, upstream)
        self.usage_note(redis_url, upstream)
        if self.wanted("memory"):
            self.memory_test(redis_url)
        if self.wanted("websocket"):
            self.websocket_test(redis_url)
        if self.wanted("revocation"):
            self.revocation_test(redis_url, upstream)
        if self.wanted("instructions"):
            self.instruction_test(redis_url, upstream)
        text = self.report()
        self.o.out.parent.mkdir(parents=True, exist_ok=True)
        self.o.out.write_text(text + "\n")
        print("\n" + text)
        self.log(f"wrote {_shown(self.o.out)}")
        return 0


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="Benchmark the sidecar against nginx and asgiproxy."
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s, 1 round, 100 MiB")
    parser.add_argument("-d", "--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per scenario")
    parser.add_argument("--transfer-mib", type=int, help="upload/download size (default 500)")
    parser.add_argument("--revocations", type=int, help="revocations to time (default 100)")
    parser.add_argument("--profile-seconds", type=float, help="py-spy duration (default 10)")
    parser.add_argument(
        "--ws-idle", type=int, help="idle WebSockets held open (default 1000, quick 200)"
    )
    parser.add_argument(
        "--only",
        help="comma list of throughput scenarios: direct,full,rl_off,jwt,cold,workers2,asgiproxy,"
        "fa_decide,nginx_fa,assertion,nginx_pass,baseline (the c1 rows follow their scenario)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: "
        "memory,revocation,websocket,profile,workers2,instructions",
    )
    parser.add_argument("--out", type=Path, help="report path (default bench/results/...)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure the full path of the sidecar in this checkout (e.g. a `git "
        "worktree` of the previous release), interleaved with this build's: scenario `baseline`",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="run the sidecar from this checkout (e.g. a `git worktree` of one commit) "
        "instead of the working tree",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        help="seconds to wait for other work on the machine to stop before measuring "
        "(default 300, quick 0)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep bench/work/run-* (logs)")
    parser.add_argument(
        "--keep-processes",
        action="store_true",
        help="measure every round on the same sidecar and asgiproxy processes (faster; by "
        "default each round gets fresh ones, as one process's speed can be luck)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    source = (args.source or ROOT).resolve()
    if not (source / "sidecar" / "__main__.py").is_file():
        parser.error(f"--source {source}: no sidecar package there")
    commit, dirty = git_state(source)
    name = f"{datetime.date.today().isoformat()}-{commit}" + ("-dirty" if dirty else "")
    default_out = BENCH / "work" / f"{name}-quick.md" if quick else BENCH / "results" / f"{name}.md"
    return Options(
        duration=args.duration or (3.0 if quick else 10.0),
        connections=args.connections,
        threads=args.threads,
        rounds=args.rounds or (1 if quick else 3),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
        transfer_bytes=(args.transfer_mib or (100 if quick else 500)) * MIB,
        revocations=args.revocations or (20 if quick else 100),
        profile_seconds=args.profile_seconds or (3.0 if quick else 10.0),
        ws_idle=args.ws_idle or (200 if quick else 1000),
        only=set(args.only.split(",")) if args.only else None,
        skip={p for p in args.skip.split(",") if p},
        out=(args.out or default_out).resolve(),
        keep_work=args.keep_work,
        quick=quick,
        source=source,
        baseline=args.baseline.resolve() if args.baseline else None,
        wait_idle=args.wait_idle if args.wait_idle is not None else (0.0 if quick else 300.0),
        keep_processes=args.keep_processes,
    )


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM behaves like CTRL-C, so the cleanup below runs for both."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    bench = Bench(options)
    failed = True
    try:
        with interrupts_raise():
            code = bench.run()
            failed = False
            return code
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, httpx.HTTPError, OSError) as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        print(f"logs kept in {bench.work}", file=sys.stderr)
        return 1
    finally:
        bench.procs.stop_all()
        if not failed and not options.keep_work:
            shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
