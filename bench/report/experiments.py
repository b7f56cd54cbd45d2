"""The report's sections of the experiments after throughput: peak memory, WebSocket
relay, revocation propagation, and instructions per request."""

from __future__ import annotations

import statistics

from bench import instructions
from bench.context import Run
from bench.experiments import (
    ASSERTION_ON,
    INSTRUCTION_REQUESTS,
    SCOPED_KEY,
    THIS_BUILD,
    TRACED_PREFIX,
    WS_FRAME,
)
from bench.options import MIB


def memory_table(run: Run) -> list[str]:
    if not run.results.memory:
        return []
    size = run.o.transfer_bytes
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
    for m in run.results.memory:
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


def websocket_tables(run: Run) -> list[str]:
    ws = run.results.websocket
    if not ws:
        return []
    out = [
        "## WebSocket relay",
        "",
        f"Sink upstream: bench/upstreams.py `ws` (websockets, no compression, no pings). "
        f"Client (websockets, in the bench process) sends {WS_FRAME // 1024} KiB binary "
        f"messages over one socket for {run.o.duration:g} s, authenticated with the bench "
        "key; MiB/s = bytes the upstream counted / (first send until its count came back). "
        "`direct` = client straight to the upstream: when it is not clearly faster than "
        "`sidecar`, the Python client is the limit and the sidecar figure is a floor; the "
        "sidecar's CPU per MiB is the steadier number. Medians over "
        f"{run.o.rounds} interleaved round(s). Target through the sidecar: ≥ 50 MiB/s.",
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
            f"{run.o.ws_idle + 16}) after one warm-up socket; VmRSS before opening them "
            "and while all are open (each then answered a ping through the sidecar).",
            "",
            "| open idle sockets | VmRSS before MiB | VmRSS open MiB | KiB per socket | "
            "sockets per 100 MB of RSS |",
            "|---:|---:|---:|---:|---:|",
            f"| {idle['count']} | {idle['before_mib']:.1f} | {idle['after_mib']:.1f} | "
            f"{idle['kib_per_socket']:.1f} | {idle['per_100mb']:,.0f} |",
        ]
    return [*out, ""]


def revocation_table(run: Run) -> list[str]:
    r = run.results.revocation
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


def instruction_table(run: Run) -> list[str]:
    if not run.results.instructions:
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
    out += [f"| {label} | {count:,.0f} |" for label, count in run.results.instructions.items()]
    this = run.results.instructions.get(THIS_BUILD)
    signed = run.results.instructions.get(ASSERTION_ON)
    baseline = next(
        (
            n
            for k, n in run.results.instructions.items()
            if k not in (THIS_BUILD, ASSERTION_ON, SCOPED_KEY) and not k.startswith(TRACED_PREFIX)
        ),
        None,
    )
    if this and signed:
        out += ["", f"Identity assertion on / off: {signed / this:.3f}x."]
    scoped = run.results.instructions.get(SCOPED_KEY)
    if this and scoped:
        out += ["", f"Scoped, address-restricted key / unrestricted key: {scoped / this:.4f}x."]
    traced = {
        float(k.removeprefix(TRACED_PREFIX)): n
        for k, n in run.results.instructions.items()
        if k.startswith(TRACED_PREFIX)
    }
    for ratio, n in sorted(traced.items()) if this else ():
        out += [
            "",
            f"Tracing at sample_ratio {ratio:g} / tracing off: {n / this:.4f}x "
            f"(+{n - this:,.0f} instructions per request).",
        ]
    none, every = traced.get(0.0), traced.get(1.0)
    if this and none and every:  # the 0.01 row samples ~20 requests: this is steadier
        expected = none + 0.01 * (every - none)
        out += [
            "",
            f"Tracing at 0.01 from the 0 and 1 rows (unsampled cost + 1 % of a recorded "
            f"request's): {expected:,.0f} instructions per request, "
            f"{expected / this:.4f}x tracing off.",
        ]
    if this and baseline:
        out += ["", f"This build / baseline: {this / baseline:.3f}x."]
    return [*out, ""]
