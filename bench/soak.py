"""Chaos soak: real processes under steady load while faults are injected, with the
sidecar's invariants checked all the time. ``bench/soak --help``; bench/README.md says
what it runs, which faults and which invariants, and how to read the report.

The entry point: the options, then the run in order (set-up, seeding, the peak, the
load with the faults, the record check and the resource sampler beside it, the final
checks) and the report. Its parts: ``soak_rig`` and ``soak_cluster`` (the processes),
``soak_ledger`` (the books), ``soak_load`` (the load), ``soak_faults`` (the chaos),
``soak_checks`` and ``soak_resources`` (what is checked), ``soak_report``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

from bench.harness import ROOT
from bench.soak_checks import UpstreamRecord, final_checks
from bench.soak_cluster import Cluster
from bench.soak_faults import Chaos
from bench.soak_ledger import REVOKE_DEADLINE, Ledger, Report, now
from bench.soak_load import Load
from bench.soak_report import write_report
from bench.soak_resources import Resources
from bench.soak_rig import Pool


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.minutes * 60.0
        self.warmup = (
            args.warmup if args.warmup is not None else max(30.0, min(300.0, self.duration / 4))
        )
        self.work = ROOT / "bench" / "work" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
        self.work.mkdir(parents=True)
        self.report = Report(tail=args.tail)
        self.ledger = Ledger()
        self.stop_load = asyncio.Event()
        self.cluster = Cluster(self.work, self.work / "upstream-record.jsonl")
        self.load = Load(self.cluster, self.ledger, self.report, self.stop_load)
        self.chaos = Chaos(self.cluster, self.report, self.stop_load)
        self.record = UpstreamRecord(self.cluster.record, self.ledger, self.report)
        self.resources = Resources(self.cluster, self.report, self.work, self.warmup)

    async def run(self) -> int:
        cluster, report, load = self.cluster, self.report, self.load
        cluster.start()
        try:
            if not await cluster.wait_healthy(90):
                print(f"soak: the set-up did not become healthy: {await cluster.healthy()}")
                return 2
            report.started = now()
            await load.seed()
            pools = [Pool(cluster.a.port, 24), Pool(cluster.b.port, 24)]
            if self.args.rps:
                peak, rps = None, float(self.args.rps)
            else:
                print(f"soak: measuring the peak for {self.args.peak_seconds:.0f} s", flush=True)
                peak = await load.measure_peak(self.args.peak_seconds, pools)
                rps = 0.8 * peak
            report.peak, report.rps = peak, rps
            print(f"soak: load {rps:.0f} req/s for {self.args.minutes} min", flush=True)
            self.record.check()  # the seeding and the peak run are checked too
            report.started = now()
            load_started = time.monotonic()
            side = [
                asyncio.ensure_future(
                    self.chaos.run(self.args.minutes, self.duration, load_started)
                ),
                asyncio.ensure_future(self.record.watch(self.stop_load)),
                asyncio.ensure_future(self.resources.sampler(self.stop_load)),
                asyncio.ensure_future(load.uploads()),
            ]
            report.achieved = await load.drive(rps, self.duration, pools, cap=64)
            self.resources.describe_fds("fds-at-end.txt")
            self.stop_load.set()
            await asyncio.gather(*side, return_exceptions=True)
            report.load_seconds = time.monotonic() - load_started
            await asyncio.sleep(REVOKE_DEADLINE + 1.5)  # the last revocation probes
            await cluster.wait_healthy(60)
            self.record.check()
            await final_checks(cluster.a.port, self.ledger, report, self.record)
        finally:
            cluster.stop()
        return write_report(
            report,
            self.resources.verdicts(),
            work=self.work,
            minutes=self.args.minutes,
            warmup=self.warmup,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description="Chaos soak of the sidecar: real Redis + Sentinel, two sidecars, steady "
        "load, injected faults, invariants checked all the time (bench/README.md).",
    )
    parser.add_argument("--minutes", type=float, default=30, help="length of the load (30)")
    parser.add_argument("--rps", type=float, help="load in req/s (default: 80 %% of the peak)")
    parser.add_argument("--peak-seconds", type=float, default=10, help="peak measurement (10)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before resources are judged (default: a quarter "
        "of the run, between 30 and 300)",
    )
    parser.add_argument(
        "--tail", type=float, default=10, help="seconds after a fault still in its window (10)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random)")
    args = parser.parse_args()
    random.seed(args.seed)
    soak = Soak(args)
    loop_run: Any
    try:
        import uvloop

        loop_run = uvloop.run
    except ImportError:  # pragma: no cover
        loop_run = asyncio.run
    try:
        return int(loop_run(soak.run()))
    except KeyboardInterrupt:
        soak.cluster.stop()
        return 130


if __name__ == "__main__":
    sys.exit(main())
