"""The markdown report of a bench run: machine, tools and parameters first, then each
part's section, the profile and the notes."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from bench.context import Run
from bench.harness import git_state, shown, tool_version, version_of
from bench.report.experiments import (
    instruction_table,
    memory_table,
    revocation_table,
    websocket_tables,
)
from bench.report.scale_targets import scale_targets_table
from bench.report.targets import targets_table
from bench.report.throughput import ratio_table, throughput_tables
from bench.services import BENCH_PYTHON, NEVER_LIMITING, PATH
from sidecar.redisconn.embedded import find_binary


def render(run: Run) -> str:
    o = run.o
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
        f"{p} {version_of(p)}"
        for p in ("uvicorn", "uvloop", "httptools", "redis", "hiredis",
                  "prometheus-client", "orjson")
    )  # fmt: skip
    load_tool = (
        tool_version([run.load.wrk, "--version"])
        if run.load.wrk
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
        f"- upstream: {run.services.upstream_label}; "
        + (
            tool_version([run.services.nginx, "-v"])
            if run.services.nginx
            else "nginx not installed"
        ),
        f"- redis: {tool_version([find_binary(), '--version'])}",
        f"- curl: {tool_version(['curl', '--version'])}",
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
    lines += scale_targets_table(run)
    lines += targets_table(run)
    lines += throughput_tables(run)
    lines += ratio_table(run)
    lines += memory_table(run)
    lines += websocket_tables(run)
    lines += revocation_table(run)
    lines += instruction_table(run)
    if run.results.profile:
        lines += ["## Profile of the full production path (API key, cached)", ""]
        lines += [run.results.profile, ""]
        lines += [f"Flame graph: `{shown(p)}`" for p in run.results.profile_files]
        lines += [""]
    if run.results.notes or run.results.unavailable:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in run.results.notes]
        lines += [f"- `{k}`: not available — {v}" for k, v in run.results.unavailable.items()]
        lines += [""]
    return "\n".join(lines)
