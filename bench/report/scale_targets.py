"""The report's first table: issue 30's acceptance (performance at scale), every figure
from this run against its target. The two in-process guards also show the --baseline
build measured in the same run, the reference they guard against."""

from __future__ import annotations

import statistics

from bench.context import Run
from bench.experiments import THIS_BUILD
from bench.load import Scenario
from bench.report.targets import Row, rows_table
from bench.report.throughput import ratio


def scale_targets_table(run: Run) -> list[str]:
    by = {s.key: s for s in run.results.scenarios}
    rows: list[Row] = []
    for measure, a, b, least in (
        ("`nginx_fa` (keepalive, no decision cache) / `nginx_pass`", "nginx_fa", "nginx_pass", 0.2),
        ("`nginx_fa_cached` (1 s) / `nginx_pass`", "nginx_fa_cached", "nginx_pass", 0.6),
    ):
        value, detail = ratio(run, a, b)
        shown = "n/a" if value is None else f"{value:.2f}x"
        met = None if value is None else value >= least
        rows.append((measure, f"≥ {least:g}x", shown, detail, met))
    rows.append(_throughput_guard(run))
    rows.append(_latency_guard(by))
    rows.append(_cost_against_baseline(run, by))
    rows.append(_cached_revocation(run))
    return ["## Targets (issue 30's acceptance)", "", *rows_table(rows), ""]


def _throughput_guard(run: Run) -> Row:
    measure, target = "`full` / asgiproxy, c32 (req/s)", "≥ 1.5x (guard)"
    value, detail = ratio(run, "full", "asgiproxy")
    if value is None:
        return (measure, target, "n/a", detail, None)
    base, base_detail = ratio(run, "baseline", "asgiproxy")
    if base is not None:
        detail += f"; --baseline build / asgiproxy {base:.2f}x ({base_detail})"
    return (measure, target, f"{value:.2f}x", detail, value >= 1.5)


def _latency_guard(by: dict[str, Scenario]) -> Row:
    measure, target = "`full` c1 p50 / asgiproxy c1 p50", "≤ 1.05 (guard)"
    if "full_c1" not in by or "asgiproxy_c1" not in by:
        return (measure, target, "n/a", "`full_c1` or `asgiproxy_c1` not measured", None)

    def p50s(key: str) -> tuple[float, str]:
        pairs = zip(by[key].samples, by["asgiproxy_c1"].samples, strict=True)
        per_round = [x.p50_ms / y.p50_ms for x, y in pairs]
        value = (by[key].median("p50_ms") or 0) / (by["asgiproxy_c1"].median("p50_ms") or 1)
        return value, f"per round {min(per_round):.2f}..{max(per_round):.2f}"

    value, detail = p50s("full_c1")
    detail = (
        f"{by['full_c1'].median('p50_ms'):.3f} vs {by['asgiproxy_c1'].median('p50_ms'):.3f} ms; "
        + detail
    )
    if "baseline_c1" in by:
        base, base_detail = p50s("baseline_c1")
        detail += f"; --baseline build / asgiproxy {base:.2f} ({base_detail})"
    return (measure, target, f"{value:.2f}", detail, value <= 1.05)


def _cost_against_baseline(run: Run, by: dict[str, Scenario]) -> Row:
    """Instructions per request (callgrind) decide: they repeat on a shared machine, where
    CPU µs per request move by more than the 5 % this row judges."""
    measure, target = "`full` CPU per request, against the --baseline build", "≤ +5 %"
    this = run.results.instructions.get(THIS_BUILD)
    counted = run.results.instructions.items()
    base = next((v for k, v in counted if k.startswith("--baseline")), None)
    parts: list[str] = []
    if "full" in by and "baseline" in by:
        pairs = [
            (x.cpu_us_per_request, y.cpu_us_per_request)
            for x, y in zip(by["full"].samples, by["baseline"].samples, strict=True)
            if x.cpu_us_per_request and y.cpu_us_per_request
        ]
        if pairs:
            per_round = [x / y for x, y in pairs]
            full_cpu = statistics.median(x for x, _ in pairs)
            base_cpu = statistics.median(y for _, y in pairs)
            parts.append(
                f"CPU {full_cpu:.0f} vs {base_cpu:.0f} µs/req "
                f"({(full_cpu / base_cpu - 1) * 100:+.1f} %, per round "
                f"{(min(per_round) - 1) * 100:+.0f}..{(max(per_round) - 1) * 100:+.0f} %)"
            )
    if this and base:
        cost = this / base - 1
        parts.insert(0, f"instructions {this:,.0f} vs {base:,.0f} per request (callgrind)")
        return (measure, target, f"{cost * 100:+.1f} %", "; ".join(parts), cost <= 0.05)
    if not parts:
        return (measure, target, "n/a", "needs --baseline and the instructions part", None)
    return (measure, target, "n/a", "; ".join(parts) + "; instructions not counted", None)


def _cached_revocation(run: Run) -> Row:
    measure = "revocation through the 1 s cached nginx config (`nginx_fa_cached`)"
    result = run.results.cached_revocation
    if not result:
        return (measure, "≤ 2 s", "n/a", "not measured", None)
    bound = result["cache_seconds"] + 1
    detail = (
        f"the last request let through was sent {result['served_max_s']:.2f} s after the "
        f"revocation (max of {result['count']} keys); the first 401 came after median "
        f"{result['refused_median_s']:.2f} s, max {result['refused_max_s']:.2f} s"
    )
    # As tests/test_forward_auth_cache.py: the bound is on the last request let through;
    # how long a loaded machine takes to answer the poll that sees the 401 is not nginx's.
    return (
        measure,
        f"≤ {bound:g} s",
        f"{result['served_max_s']:.2f} s (max)",
        detail,
        result["served_max_s"] <= bound,
    )
