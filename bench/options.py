"""The options of ``bench/run``: its command line and the defaults of a full and a
quick run."""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BENCH, ROOT, git_state

MIB = 1024 * 1024


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
        help="comma list of throughput scenarios: direct,full,scoped,rl_off,jwt,cold,workers2,"
        "asgiproxy,fa_decide,nginx_fa,nginx_fa_cached,traefik_fa,traefik_pass,assertion,"
        "full_traced,full_traced_all,full_traced_none,nginx_pass,baseline (the c1 rows follow "
        "their scenario)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of parts to skip: "
        "memory,revocation,cached_revocation,websocket,profile,workers2,instructions",
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
