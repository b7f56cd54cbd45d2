"""The experiments after throughput, each on sidecars of its own: peak memory while
proxying one large upload and download, WebSocket relay throughput and idle sockets
per RSS, revocation propagation between two instances, and instructions per request
under callgrind."""

from __future__ import annotations

import http.client
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import instructions, ws_client
from bench.context import Run
from bench.harness import (
    BENCH,
    CLK_TCK,
    cpu_ticks,
    free_port,
    git_state,
    port_open,
    vm_kib,
    wait_for,
)
from bench.options import MIB
from bench.otlp_sink import OtlpSink
from bench.scenarios import TRACED
from bench.services import BENCH_SCOPES, PATH, RESTRICTIONS, Sidecar, sidecar_config

INSTRUCTION_REQUESTS = 2000  # counted under callgrind (bench/instructions.py)
THIS_BUILD = "this build"
ASSERTION_ON = "this build, identity assertion on (EdDSA)"
SCOPED_KEY = "this build, a scoped and address-restricted key"
TRACED_PREFIX = "this build, tracing on at sample_ratio "


def traced_label(ratio: float) -> str:
    return f"{TRACED_PREFIX}{ratio:g}"


WS_PATH = "/ws/bench"
WS_FRAME = 64 * 1024


def memory_test(run: Run, redis_url: str) -> None:
    size = run.o.transfer_bytes
    port = free_port()
    run.services.procs.start(
        [sys.executable, str(BENCH / "upstreams.py"), "bulk", "--port", str(port)],
        run.work / "bulk-upstream.log",
    )
    wait_for("bulk upstream", lambda: port_open(port))
    upstream = f"http://127.0.0.1:{port}"
    source = run.work / "upload.bin"
    with open(source, "wb") as handle:
        handle.truncate(size)  # sparse: reads back as zeros without using disk
    key_header = f"X-API-Key: {run.api_key}"
    for direction in ("upload", "download"):
        sidecar = run.services.start_sidecar(
            Sidecar(f"mem-{direction}", sidecar_config(upstream=upstream, redis_url=redis_url))
        )
        curl = ["curl", "-sS", "--max-time", "300", "-H", key_header]
        curl += ["-w", "%{http_code} %{size_upload} %{size_download} %{time_total}"]
        small = subprocess.run(
            [*curl, "-o", "/dev/null", sidecar.url + "/download?bytes=1024"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        baseline = vm_kib(sidecar.pid, "VmHWM")
        body = run.work / f"{direction}.out"
        if direction == "upload":
            # curl sends "Expect: 100-continue" for a body this large, as clients do.
            command = [*curl, "-X", "POST", "-T", str(source)]
            command += ["-H", "Content-Type: application/octet-stream"]
            command += ["-o", str(body), sidecar.url + "/upload"]
        else:
            command = [*curl, "-o", "/dev/null", f"{sidecar.url}/download?bytes={size}"]
        run.log(f"memory: {size / MIB:.0f} MiB {direction} through a fresh sidecar")
        done = subprocess.run(command, capture_output=True, text=True, timeout=320, check=False)
        peak = vm_kib(sidecar.pid, "VmHWM")
        code, up, down, seconds = (done.stdout.split() + ["?"] * 4)[:4]
        moved = float(up if direction == "upload" else down) if code != "?" else 0.0
        ok = code == "200" and int(moved) == size
        if direction == "upload" and ok:
            ok = json.loads(body.read_text()).get("received") == size
        run.results.memory.append(
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
        run.services.stop_sidecar(sidecar)
    source.unlink()


def websocket_test(run: Run, redis_url: str) -> None:
    """Relay throughput (one direction, client -> upstream) direct and through a
    sidecar, interleaved over the rounds; then idle sockets held through a fresh
    sidecar against its RSS."""
    port = free_port()
    run.services.procs.start(
        [sys.executable, str(BENCH / "upstreams.py"), "ws", "--port", str(port)],
        run.work / "ws-upstream.log",
    )
    wait_for("ws upstream", lambda: port_open(port))
    config = sidecar_config(upstream=f"http://127.0.0.1:{port}", redis_url=redis_url)
    count = run.o.ws_idle
    config["server"]["max_websockets"] = count + 16
    sidecar = run.services.start_sidecar(Sidecar("ws", config))
    headers = {"X-API-Key": run.api_key}
    relayed = sidecar.url.replace("http://", "ws://") + WS_PATH
    direct = f"ws://127.0.0.1:{port}{WS_PATH}"

    # Idle sockets first, on the fresh process, after one socket has warmed the path.
    ws_client.throughput(relayed, headers, 0.2, WS_FRAME)
    run.log(f"websocket: {count} idle sockets through a fresh sidecar")
    before = vm_kib(sidecar.pid, "VmRSS")
    after, opened = ws_client.hold_idle(
        relayed, headers, count, lambda: vm_kib(sidecar.pid, "VmRSS")
    )
    added = max(after - before, 1) * 1024
    run.results.websocket["idle"] = {
        "count": opened,
        "before_mib": before / 1024,
        "after_mib": after / 1024,
        "kib_per_socket": added / 1024 / opened,
        "per_100mb": opened * 100e6 / added,
    }

    seconds = run.o.duration
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "sidecar": []}
    run.log(
        f"websocket: {seconds:g} s of {WS_FRAME // 1024} KiB binary messages, "
        f"{run.o.rounds} round(s), direct and through the sidecar"
    )
    for _ in range(run.o.rounds):
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
            run.log(f"websocket {path}: {received / MIB / took:.0f} MiB/s")
    run.results.websocket["throughput"] = runs
    run.services.stop_sidecar(sidecar)


def revocation_test(run: Run, redis_url: str, upstream: str) -> None:
    count = run.o.revocations
    a = run.services.start_sidecar(
        Sidecar("revoke-a", sidecar_config(upstream=upstream, redis_url=redis_url))
    )
    b = run.services.start_sidecar(
        Sidecar("revoke-b", sidecar_config(upstream=upstream, redis_url=redis_url))
    )
    run.log(f"revocation: {count} keys created on A, warmed on B, revoked on A")
    api = httpx.Client(
        base_url=a.url, headers={"Authorization": f"Bearer {run.services.jwt}"}, timeout=10
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
    run.results.revocation = {
        "count": count,
        "median_ms": statistics.median(delays) * 1000,
        "p99_ms": delays[max(0, math.ceil(0.99 * len(delays)) - 1)] * 1000,
        "max_ms": delays[-1] * 1000,
        "first_poll_401": sum(1 for p in polls if p == 1),
        "max_polls": max(polls) if polls else 0,
        "failures": failures,
        "b_cache_hits": hits,
    }
    run.services.stop_sidecar(a)
    run.services.stop_sidecar(b)


def instruction_test(run: Run, redis_url: str, upstream: str) -> None:
    """Instructions per request of the full path (bench/instructions.py): this
    build, this build with the identity assertion on, this build with a scoped and
    address-restricted key, with tracing at each ratio whose ``full_traced*`` scenario
    is selected, and the --baseline build, each in a sidecar of its own under callgrind."""
    missing = instructions.available()
    if missing is not None:
        run.results.unavailable["instructions"] = missing
        return
    assertion = {"assertion": {"enabled": True, "private_key_file": run.services.assertion_key()}}
    scoped = {"scopes": BENCH_SCOPES}
    builds: list[tuple[str, Path, dict[str, Any], dict[str, Any]]] = [
        (THIS_BUILD, run.o.source, {}, {}),
        (ASSERTION_ON, run.o.source, {"identity": assertion}, {}),
        (SCOPED_KEY, run.o.source, {}, RESTRICTIONS),
    ]
    for scenario, _, ratio in TRACED:  # what tracing costs, repeatable
        if run.selected(scenario):
            if run.otlp_sink is None:
                run.otlp_sink = OtlpSink()
            tracing = {"enabled": True, "otlp_endpoint": run.otlp_sink.endpoint}
            tracing["sample_ratio"] = ratio
            builds.append((traced_label(ratio), run.o.source, {"tracing": tracing}, {}))
    if run.o.baseline is not None:
        label = f"--baseline ({git_state(run.o.baseline)[0]})"
        builds.append((label, run.o.baseline, {}, {}))
    for index, (label, source, extra, restrictions) in enumerate(builds):
        database = redis_url.rsplit("/", 1)[0] + f"/{2 + index}"
        config = sidecar_config(upstream=upstream, redis_url=database)
        if source == run.o.source:  # the scopes, for SCOPED_KEY; no other row uses them
            config["auth"] = {**config["auth"], **scoped}
        sidecar = Sidecar(f"callgrind-{index}", {**config, **extra}, source=source)
        out = run.work / f"callgrind-{index}.out"
        run.log(f"instructions per request under callgrind: {label}")
        run.services.start_sidecar(sidecar, timeout=180, wrapper=tuple(instructions.wrapper(out)))
        key, _ = run.services.create_key(sidecar, **restrictions)
        count = instructions.per_request(
            sidecar.pid, out, sidecar.port, PATH, key, INSTRUCTION_REQUESTS
        )
        run.results.instructions[label] = count
        run.services.stop_sidecar(sidecar)
