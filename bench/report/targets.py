"""The report's table of standing targets (issues 15 and 26): every figure from this run
against its target, and whether it is met. Issue 30 retired issue 15's two in-process
targets against asgiproxy (c32 ≥ 2x, c1 p50 below it); its guards are in scale_targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench.context import Run
from bench.experiments import ASSERTION_ON, SCOPED_KEY, THIS_BUILD
from bench.load import Sample
from bench.options import MIB
from bench.report.throughput import ratio

Row = tuple[str, str, str, str, bool | None]  # measure, target, this run, detail, met


def targets_table(run: Run) -> list[str]:
    """Issues 15's and 26's standing targets: every figure from this run, and whether it is met."""
    by = {s.key: s for s in run.results.scenarios}
    rows: list[Row] = []

    def missing(*keys: str) -> str:
        absent = next(k for k in keys if k not in by)
        return run.results.unavailable.get(absent.removesuffix("_c1"), f"`{absent}` not measured")

    def p50(key: str) -> float:
        return by[key].median("p50_ms") or 0.0

    def spread(a: str, b: str, of: Callable[[Sample, Sample], float]) -> str:
        per_round = [of(x, y) for x, y in zip(by[a].samples, by[b].samples, strict=True)]
        return f"per round {min(per_round):.3f}..{max(per_round):.3f}"

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
        ("c32 full path / nginx pass-through (req/s)", "full", "nginx_pass", 0.15),
        (
            "forward-auth decisions / full proxied requests (req/s, c32)",
            "fa_decide",
            "full",
            1.5,
        ),
    ):
        value, detail = ratio(run, a, b)
        shown = "n/a" if value is None else f"{value:.2f}x"
        met = None if value is None else value >= least
        rows.append((measure, f"≥ {least:g}x", shown, detail, met))
    value, detail = ratio(run, "assertion", "full")
    signed, plain = (
        run.results.instructions.get(ASSERTION_ON),
        run.results.instructions.get(THIS_BUILD),
    )
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
    rows.append(restricted_key_row(run))
    runs = run.results.websocket.get("throughput", {}).get("sidecar", [])
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
    idle = run.results.websocket.get("idle")
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
    size = f"{run.o.transfer_bytes / MIB:.0f} MiB"
    for direction in ("upload", "download"):
        m = next((m for m in run.results.memory if m["direction"] == direction), None)
        if m is None:
            rows.append((f"peak RSS, {size} {direction}", "< 100 MB", "n/a", "not measured", None))
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
    r = run.results.revocation
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
        "## Standing targets (issues 15 and 26)",
        "",
        "`full` is the full production path *with usage counting*: every key-authenticated "
        "request is counted per key and UTC day (sidecar/keys/usage.py, flushed to Redis in one "
        "batch every `auth.api_keys.last_used_flush_seconds`); there is no switch to turn "
        "it off, so every sidecar row includes it."
        + (" **Quick mode: smoke numbers, not a verdict.**" if run.o.quick else ""),
        "",
    ]
    return [*out, *rows_table(rows), ""]


def rows_table(rows: list[Row]) -> list[str]:
    """A targets table: a row per measure, ``met`` shown as yes, **no** or blank."""
    out = ["| measure | target | this run | detail | met |", "|---|---|---:|---|---|"]
    for measure, target, shown, detail, met in rows:
        mark = "" if met is None else ("yes" if met else "**no**")
        out.append(f"| {measure} | {target} | {shown} | {detail} | {mark} |")
    return out


def restricted_key_row(run: Run) -> Row:
    """Issue 26: a scoped, address-restricted key costs at most 3 % more CPU per request
    than an unrestricted key, on the same sidecar process (`scoped` against `full`)."""
    measure, target = "CPU per request, restricted key / unrestricted key (same process)", "≤ 1.03x"
    by = {s.key: s for s in run.results.scenarios}
    scoped, plain_count = (
        run.results.instructions.get(SCOPED_KEY),
        run.results.instructions.get(THIS_BUILD),
    )
    counted = (
        f"instructions per request {scoped / plain_count:.4f}x (callgrind)"
        if (scoped and plain_count)
        else None
    )
    if "scoped" not in by or "full" not in by:
        if counted is None:
            return (measure, target, "n/a", "`scoped` or `full` not measured", None)
        assert scoped and plain_count
        return (measure, target, "n/a", counted, scoped / plain_count <= 1.03)
    pairs = [
        (x.cpu_us_per_request, y.cpu_us_per_request)
        for x, y in zip(by["scoped"].samples, by["full"].samples, strict=True)
        if x.cpu_us_per_request and y.cpu_us_per_request
    ]
    if not pairs:
        return (measure, target, "n/a", "no CPU figures", None)
    restricted = statistics.median(x for x, _ in pairs)
    plain = statistics.median(y for _, y in pairs)
    per_round = [x / y for x, y in pairs]
    detail = (
        f"{restricted:.0f} vs {plain:.0f} µs/req; "
        f"per round {min(per_round):.3f}..{max(per_round):.3f}"
    )
    value = restricted / plain
    if counted is not None:  # the measure that repeats on a shared machine decides
        assert scoped and plain_count
        return (
            measure,
            target,
            f"{value:.3f}x",
            f"{detail}; {counted}",
            scoped / plain_count <= 1.03,
        )
    return (measure, target, f"{value:.3f}x", detail, value <= 1.03)
