"""The report's throughput sections: a table of medians per connection count, and the
ratios between scenarios with their per-round spread and targets."""

from __future__ import annotations

from bench.context import Run


def throughput_tables(run: Run) -> list[str]:
    if not run.results.scenarios:
        return []
    out = ["## Throughput and latency (medians)", ""]
    for title, wanted in (("c" + str(run.o.connections), False), ("c1", True)):
        rows = [s for s in run.results.scenarios if s.key.endswith("_c1") == wanted]
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
        (x.foreign_cores or 0 for s in run.results.scenarios for x in s.samples), default=0.0
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


def ratio(run: Run, a: str, b: str) -> tuple[float | None, str]:
    """req/s of scenario ``a`` over ``b`` (medians), and the per-round spread (or why
    there is no value)."""
    by = {s.key: s for s in run.results.scenarios}
    if a not in by or b not in by:
        missing = a if a not in by else b
        return None, run.results.unavailable.get(missing.removesuffix("_c1"), "not measured")
    per_round = [x.rps / y.rps for x, y in zip(by[a].samples, by[b].samples, strict=True)]
    spread = f"per round {min(per_round):.2f}..{max(per_round):.2f}"
    return (by[a].median("rps") or 0) / (by[b].median("rps") or 1), spread


def ratio_table(run: Run) -> list[str]:
    by = {s.key: s for s in run.results.scenarios}
    rows: list[tuple[str, float | None, str, str, bool | None]] = []
    for label, a, b, target in (
        ("full production path / asgiproxy (req/s, c32)", "full", "asgiproxy", None),
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
        (
            "nginx + auth_request (keepalive) / nginx pass-through (req/s)",
            "nginx_fa",
            "nginx_pass",
            None,
        ),
        (
            "nginx + 1 s decision cache / nginx pass-through (req/s)",
            "nginx_fa_cached",
            "nginx_pass",
            None,
        ),
        (
            "Traefik + forwardAuth / Traefik pass-through (req/s)",
            "traefik_fa",
            "traefik_pass",
            None,
        ),
        ("Traefik pass-through / nginx pass-through (req/s)", "traefik_pass", "nginx_pass", None),
        ("identity assertion on / off (req/s, full path)", "assertion", "full", 0.95),
        ("full production path / nginx pass-through (req/s, c32)", "full", "nginx_pass", 0.15),
        (
            "full production path, this build / --baseline build (req/s)",
            "full",
            "baseline",
            0.97,
        ),
    ):
        value, detail = ratio(run, a, b)
        goal = "" if target is None else f"≥ {target:g}x"
        passed = None if value is None or target is None else value >= target
        rows.append((label, value, detail, goal, passed))
    for label, a, b, most in (
        ("latency added at c1, p50 (ms): full path - direct", "full_c1", "direct_c1", 0.35),
        ("c1 p50 (ms): this build - --baseline build", "full_c1", "baseline_c1", None),
    ):
        if a not in by or b not in by:
            continue
        added = (by[a].median("p50_ms") or 0) - (by[b].median("p50_ms") or 0)
        per_round = [x.p50_ms - y.p50_ms for x, y in zip(by[a].samples, by[b].samples, strict=True)]
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
