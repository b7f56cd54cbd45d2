"""Load for the throughput scenarios: wrk (or the labelled Python fallback, when wrk is
missing), what one run of it measured, and the scenarios it drives."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    BENCH,
    CLK_TCK,
    cpu_ticks,
    machine_busy_seconds,
    own_busy_seconds,
    process_tree,
)


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
            return parse_wrk(_output([*command, url], timeout))
        command = [sys.executable, str(BENCH / "loadgen.py"), url]
        command += ["--connections", str(connections), "--seconds", str(seconds)]
        for header in headers:
            command += ["--header", header]
        data = json.loads(_output(command, timeout))
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


def _output(command: list[str], timeout: float) -> str:
    """The load generator's stdout. A failure names the program and its stderr but not
    its arguments, which carry the bench's API key in a header."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        program = Path(command[0]).name if command[0] != sys.executable else Path(command[1]).name
        raise RuntimeError(
            f"{program} exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done.stdout
