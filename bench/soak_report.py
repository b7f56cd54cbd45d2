"""The soak's report: which errors fell inside fault windows, each invariant's verdict
and its evidence, rendered as markdown to bench/results/ (and printed), with the raw
samples, faults and errors beside the logs in the work directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from bench.harness import ROOT, shown
from bench.soak_ledger import (
    FAULT_KINDS,
    INVARIANTS,
    MIX,
    POOL_KEYS,
    STABLE_PER_USER,
    UPLOAD_BYTES,
    UPLOAD_EVERY,
    USERS,
    Report,
    now,
)
from bench.soak_rig import SERVICE
from sidecar.redisconn.embedded import find_binary

ResourceVerdicts = tuple[list[str], list[str], bool, bool]  # RSS rows, fd rows, ok, ok


def error_windows(report: Report) -> tuple[int, int, list[str]]:
    """5xx and unanswered requests inside a fault's window (plus the tail), outside it,
    and the first outside ones; each fault counts the errors in its window."""
    inside = outside = 0
    stray: list[str] = []
    for start, end, op, what in report.errors:
        hit = False
        for fault in report.faults:
            f_end = (fault.get("end") or now()) + report.tail
            if start <= f_end and end >= fault["start"]:
                hit = True
                fault["errors"] = fault.get("errors", 0) + 1
                break
        if hit:
            inside += 1
        else:
            outside += 1
            if len(stray) < 20:
                stray.append(f"t+{start - report.started:.1f}s {op}: {what}")
    return inside, outside, stray


def commit_state() -> tuple[str, bool]:
    """The checkout's short commit, and whether anything under sidecar/ differs from it
    (untracked files too)."""
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "sidecar"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit, bool(dirty)


def write_report(
    report: Report, resources: ResourceVerdicts, *, work: Path, minutes: float, warmup: float
) -> int:
    """Writes and prints the report; the exit status: 0 when every invariant held and
    every fault recovered."""
    rss_rows, fd_rows, rss_ok, fds_ok = resources
    inside, outside, stray = error_windows(report)
    for line in stray:
        report.violate("5xx_only_in_faults", line)
    if not rss_ok:
        report.violate("rss_flat", "see the resources table")
    if not fds_ok:
        report.violate("fds_flat", "see the resources table")
    verdicts = {name: name not in report.violations for name in INVARIANTS}
    unhealthy = [f for f in report.faults if not f.get("recovered")]
    passed = all(verdicts.values()) and not unhealthy
    commit, dirty = commit_state()
    total = sum(report.ops.values())
    kinds = Counter(f["kind"] for f in report.faults)
    load1, load5, _ = os.getloadavg()
    peak = report.peak
    lines = [
        f"# Chaos soak {time.strftime('%Y-%m-%d %H:%M', time.localtime(report.started))}"
        f" at {commit}{' (sidecar/ modified)' if dirty else ''}: "
        f"**{'PASS' if passed else 'FAIL'}**",
        "",
        f"Command: `bench/soak {' '.join(sys.argv[1:])}`. Machine: {os.cpu_count()} CPUs, "
        f"load average {load1:.1f} / {load5:.1f} (1 / 5 min) at the end.",
        "",
        "## Set-up",
        "",
        "Real processes on 127.0.0.1: Redis master + replica (redis-server "
        f"{find_binary()}, AOF on), one Sentinel (quorum 1, down-after 10 s) watching "
        f"`{SERVICE}`; sidecar-a (1 process) and sidecar-b (`--workers 2`), both on "
        f"`redis+sentinel://`; the soak upstream (`bench/soak_upstream.py`, uvicorn). "
        f"{USERS} users, {USERS * STABLE_PER_USER} cached keys, {POOL_KEYS} pool keys.",
        "",
        "## Load",
        "",
        f"- measured peak: {f'{peak:.0f} req/s' if peak else 'not measured (--rps)'}"
        f"; target {report.rps:.0f} req/s"
        f"{' (80 % of the peak)' if peak else ''}; achieved {report.achieved:.0f} req/s "
        f"over {report.load_seconds / 60:.1f} min ({total} requests; {report.shed} shed "
        "because 64 were already in flight)",
        "- mix: " + ", ".join(f"{op} {report.ops[op]}" for op in MIX),
        f"- large uploads ({UPLOAD_BYTES // (1024 * 1024)} MiB, every {UPLOAD_EVERY:.0f} s): "
        + (", ".join(f"{k}: {v}" for k, v in sorted(report.uploads.items())) or "none"),
        f"- upstream record lines checked against the ledger: {report.upstream_lines}",
        f"- revocations probed 1 s after their DELETE: {report.revocations_checked} "
        f"({report.revocation_probes} probes)",
        "",
        "Answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items())),
        "",
        "## Faults",
        "",
        "Counts: " + ", ".join(f"{k} {kinds[k]}" for k in FAULT_KINDS),
        "",
        "| # | fault | at | lasted until healthy | 5xx/unanswered in window + tail | note |",
        "|---|---|---|---|---|---|",
    ]
    for i, fault in enumerate(report.faults, 1):
        lasted = (fault.get("end") or now()) - fault["start"]
        lines.append(
            f"| {i} | {fault['kind']} | t+{fault['start'] - report.started:.0f}s | "
            f"{lasted:.1f} s{'' if fault.get('recovered') else ' (NOT recovered)'} | "
            f"{fault.get('errors', 0)} | {fault['note']} |"
        )
    lines += [
        "",
        f"5xx and unanswered requests: {inside} inside fault windows (+{report.tail:.0f} s "
        f"tail), {outside} outside.",
        "",
        "## Invariants",
        "",
        "| invariant | verdict | evidence |",
        "|---|---|---|",
    ]
    for name, text in INVARIANTS.items():
        found = report.violations.get(name, [])
        evidence = "<br>".join(found[:5]) if found else _evidence(report, name, inside)
        lines.append(f"| {text} | {'holds' if verdicts[name] else 'VIOLATED'} | {evidence} |")
    lines += [
        "",
        f"## Resources (sampled every 5 s; judged after a warm-up of {warmup:.0f} s)",
        "",
        "RSS per process: drift = the highest sample after the warm-up against the "
        "first ones after it (medians of 3); must stay under +10 %.",
        "",
        "| process | pid | samples | RSS MiB | drift | verdict |",
        "|---|---|---|---|---|---|",
        *rss_rows,
        "",
        "Open file descriptors per instance (all its processes): the lowest count in "
        "the last fifth of the samples after the warm-up against the lowest in the "
        "first fifth (connections that come and go with the load lift single samples; "
        "a leak lifts the floor), within the slack.",
        "",
        "| instance | fds start -> end | range | slack | verdict |",
        "|---|---|---|---|---|",
        *fd_rows,
        "",
        f"Work directory: `{shown(work)}` (logs, configs, the upstream "
        "record, soak-data.json with every sample, fault and error, and what each "
        "sidecar held open after the warm-up and at the end: fds-*.txt)",
    ]
    if any(report.violations.values()):
        lines += ["", "## Violations in detail", ""]
        for name, found in report.violations.items():
            lines += [f"- {name}:"] + [f"  - {item}" for item in found]
    text = "\n".join(lines) + "\n"
    raw = {
        "faults": report.faults,
        "errors": report.errors,
        "samples": [
            {"label": label, "pid": pid, "series": series}
            for (label, pid), series in report.samples.items()
        ],
    }
    (work / "soak-data.json").write_bytes(orjson.dumps(raw))
    day = time.strftime("%Y-%m-%d", time.localtime(report.started))
    out = ROOT / "bench" / "results" / f"soak-{day}-{commit}-{minutes:g}min.md"
    out.write_text(text)
    print(text)
    print(f"soak: {'PASS' if passed else 'FAIL'}; report written to {shown(out)}")
    return 0 if passed else 1


def _evidence(report: Report, name: str, inside: int) -> str:
    if name == "no_unauthenticated_upstream":
        bad = sum(v for k, v in report.statuses.items() if k.startswith("bad "))
        return f"{report.upstream_lines} upstream requests checked; {bad} bad credentials sent"
    if name == "valid_key_never_401":
        return f"{report.ops['cached'] + report.ops['fresh'] + report.ops['jwt']} requests"
    if name == "created_keys_exist":
        return (
            f"{report.keys_checked} keys listed in the right state; "
            f"{report.active_checked} active ones used after the soak"
        )
    if name == "revoked_within_1s":
        return f"{report.revocations_checked} revocations, {report.revocation_probes} probes"
    if name == "5xx_only_in_faults":
        return f"{inside} inside windows, 0 outside"
    if name in ("rss_flat", "fds_flat"):
        return "the Resources tables below"
    if name == "expected_statuses":
        return "every answer counted under Load"
    if name == "uploads_intact":
        return ", ".join(f"{k}: {v}" for k, v in sorted(report.uploads.items())) or "none"
    return "-"
