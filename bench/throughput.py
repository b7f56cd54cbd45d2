"""The throughput experiment: every selected scenario under wrk in interleaved rounds
(fresh server processes each round unless --keep-processes), the key cache's and the
access log's sanity notes, revocation through the cached nginx front, the usage counts
of the bench key, and a py-spy profile of the full path."""

from __future__ import annotations

import contextlib
import subprocess
import time

import httpx

from bench.cached_revocation import cached_revocation
from bench.context import Run
from bench.harness import BENCH, machine_busy_seconds, own_busy_seconds, tool_version
from bench.load import Scenario, measure
from bench.profile_summary import markdown as profile_markdown
from bench.profile_summary import summarise, tracing_functions
from bench.scenarios import throughput_scenarios
from bench.services import PATH, Sidecar, sidecar_config

PY_SPY = BENCH / ".venv" / "bin" / "py-spy"
CACHED_REVOCATIONS = 10


def throughput(run: Run, redis_url: str, upstream: str) -> None:
    run.results.scenarios = throughput_scenarios(run, redis_url, upstream)
    full = run.sidecars["full"]
    key_header = f"X-API-Key: {run.api_key}"
    for scenario in run.results.scenarios:
        check_answers(run, scenario)
    wait_until_idle(run)
    run.log(f"warm-up: {run.o.warmup:g}s per scenario")
    for scenario in run.results.scenarios:
        run.load.run(scenario.url, scenario.headers, scenario.connections, run.o.warmup)
    cache_seen: dict[str, dict[str, float]] = {}
    hits_before = cache_counts(run)
    for round_no in range(run.o.rounds):
        if round_no and not run.o.keep_processes:
            add_counts(cache_seen, hits_before, cache_counts(run))
            restart_servers(run, upstream)
            hits_before = cache_counts(run)
        shift = round_no % len(run.results.scenarios)
        order = run.results.scenarios[shift:] + run.results.scenarios[:shift]
        for scenario in order:
            sample = measure(run.load, scenario, run.o.duration)
            scenario.samples.append(sample)
            flag = f"  non-2xx {sample.non2xx}" if sample.non2xx else ""
            flag += f"  socket errors {sample.errors}" if sample.errors else ""
            run.log(
                f"round {round_no + 1}/{run.o.rounds} {scenario.key:13s} "
                f"{sample.rps:9.0f} req/s  p50 {sample.p50_ms:7.3f} ms  "
                f"p99 {sample.p99_ms:7.3f} ms  cpu {sample.cpu_us_per_request or 0:6.1f} "
                f"us/req  other load {sample.foreign_cores or 0:4.2f} cores{flag}"
            )
    add_counts(cache_seen, hits_before, cache_counts(run))
    sanity_notes(run, cache_seen)
    cached = next((s for s in run.results.scenarios if s.key == "nginx_fa_cached"), None)
    if cached is not None and run.wanted("cached_revocation"):
        cached_revocation(run, cached, run.sidecars["fa"], CACHED_REVOCATIONS)
    if run.wanted("profile") and run.selected("full"):
        run_profile(run, full, key_header)
    for name in ("traced", "traced-all", "traced-none"):  # the tracing scenarios' sidecars
        traced = run.sidecars.get(name)
        if run.wanted("profile") and traced is not None:
            run_profile(run, traced, key_header)
    for sidecar in list(run.sidecars.values()):
        run.services.stop_sidecar(sidecar)


def restart_servers(run: Run, upstream: str) -> None:
    """A fresh process for every Python server measured (the sidecars, asgiproxy), on
    the same ports, then the warm-up again. On some machines identical code runs up
    to ~20 % faster or slower from one process to the next (memory placement): with
    a process per round, the medians are not one process's luck."""
    run.log("round: restarting the sidecars and asgiproxy (fresh processes)")
    moved: dict[int, int] = {}
    for sidecar in run.sidecars.values():
        old = sidecar.pid
        run.services.stop_sidecar(sidecar)
        run.services.start_sidecar(sidecar)
        moved[old] = sidecar.pid
    if run.services.peer is not None:
        old = run.services.peer.pid
        run.services.procs.stop(run.services.peer)
        moved[old] = run.services.start_asgiproxy(upstream)[1]
    for scenario in run.results.scenarios:
        scenario.root_pid = moved.get(scenario.root_pid, scenario.root_pid)
    for scenario in run.results.scenarios:
        check_answers(run, scenario)
        run.load.run(scenario.url, scenario.headers, scenario.connections, run.o.warmup)


def wait_until_idle(run: Run) -> None:
    """Other work on the machine (a test suite, a build) competes for the same cores;
    wait a bounded time for it to stop, and say so in the report if it does not."""
    deadline = time.monotonic() + run.o.wait_idle
    while run.o.wait_idle > 0:
        machine, own, started = machine_busy_seconds(), own_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        elapsed = time.monotonic() - started
        foreign = ((machine_busy_seconds() - machine) - (own_busy_seconds() - own)) / elapsed
        if foreign < 0.15:
            return
        if time.monotonic() > deadline:
            run.results.notes.append(
                f"The machine was still busy with other work ({foreign:.2f} cores) after "
                f"waiting {run.o.wait_idle:g} s for it to be idle; the run went ahead."
            )
            return
        run.log(f"waiting for other work to finish: {foreign:.2f} cores busy")


def check_answers(run: Run, scenario: Scenario) -> None:
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


def cache_counts(run: Run) -> dict[str, dict[str, float]]:
    return {
        name: sidecar.metric("sidecar_key_cache_total") for name, sidecar in run.sidecars.items()
    }


def sanity_notes(run: Run, seen: dict[str, dict[str, float]]) -> None:
    for name, counts in seen.items():
        hits = counts.get('{result="hit"}', 0)
        miss = counts.get('{result="miss"}', 0)
        if hits + miss:
            run.results.notes.append(
                f"Key cache on sidecar `{name}` during the rounds: {hits:.0f} hits, "
                f"{miss:.0f} misses ({100 * hits / (hits + miss):.1f} % hits)."
            )
    full = run.sidecars.get("full")
    if full is not None:
        lines = sum(1 for line in full.log.open("rb") if b'"request_id"' in line)
        run.results.notes.append(
            f"Access log of sidecar `full`: {lines} JSON lines written to a file (access log ON)."
        )


def usage_note(run: Run, redis_url: str, upstream: str) -> None:
    """The usage counts of the bench key, read once the throughput sidecars have
    stopped (and so flushed them), against the requests wrk completed with it."""
    reader = run.services.start_sidecar(
        Sidecar("usage", sidecar_config(upstream=upstream, redis_url=redis_url))
    )
    response = httpx.get(
        f"{reader.url}/api/v1/api-keys/{run.api_key_id}/usage",
        params={"days": 2},
        headers={"Authorization": f"Bearer {run.services.jwt}"},
        timeout=10,
    )
    run.services.stop_sidecar(reader)
    if response.status_code != 200:
        run.results.notes.append(f"Usage counts of the bench key: {response.status_code}.")
        return
    measured = sum(
        x.requests
        for s in run.results.scenarios
        if f"X-API-Key: {run.api_key}" in s.headers  # the bench key's, not `scoped`'s
        for x in s.samples
    )
    run.results.notes.append(
        f"Usage counting: the bench key's usage shows {response.json()['total_requests']:,} "
        f"requests; the key-authenticated wrk runs of the measured rounds alone completed "
        f"{measured:,} (warm-ups, checks and the profile run come on top)."
    )


def run_profile(run: Run, full: Sidecar, key_header: str) -> None:
    if not PY_SPY.exists():
        run.results.notes.append("Profile skipped: py-spy not installed in bench/.venv.")
        return
    seconds = run.o.profile_seconds
    stamp = run.o.out.stem
    suffix = "" if full.name == "full" else f"-{full.name}"
    raw = run.work / f"profile{suffix}.raw.txt"
    svg = run.o.out.parent / f"profile-{stamp}{suffix}.svg"
    run.log(f"profiling sidecar {full.name} under c{run.o.connections} load for {seconds:g}s")
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
        sample = run.load.run(full.url + PATH, [key_header], run.o.connections, seconds + 2)
        for spy in spies:
            spy.wait(30)
    if not raw.exists():
        run.results.notes.append("Profile failed: py-spy wrote nothing (ptrace not permitted?).")
        return
    text = (
        f"py-spy {tool_version([str(PY_SPY), '--version'])}, 100 Hz, {seconds:g}s, "
        f"sidecar `{full.name}` under wrk c{run.o.connections} ({sample.rps:.0f} req/s while "
        "sampled).\n\n" + profile_markdown(summarise(raw.read_text()))
    )
    if full.name == "full":
        run.results.profile = text
    else:  # a traced sidecar: its profile follows, with the tracing code's top entries
        tracing = tracing_functions(raw.read_text())
        rows = [f"| `{name}` | {100 * n / total:.1f} % |" for name, n, total in tracing]
        run.results.profile += (
            f"\n\n### Sidecar `{full.name}`\n\n{text}\n\nTracing code, by innermost "
            "tracing frame (what it calls included):\n\n| function | share |\n|---|---:|\n"
            + "\n".join(rows)
        )
    if svg.exists():
        run.results.profile_files.append(svg)


# -- instructions ---------------------------------------------------------------


def add_counts(
    total: dict[str, dict[str, float]],
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
) -> None:
    """Add each sidecar's counter increases from ``before`` to ``after`` to ``total``."""
    for name, counts in after.items():
        into = total.setdefault(name, {})
        for labels, value in counts.items():
            into[labels] = into.get(labels, 0.0) + value - before.get(name, {}).get(labels, 0.0)
