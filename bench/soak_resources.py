"""The soak's leak checks: RSS and open file descriptors of every sidecar process read
from /proc every 5 s, what each one holds open written down for a look afterwards, and
the verdicts on both series after the warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
from collections import Counter
from pathlib import Path

from bench.soak_cluster import Cluster
from bench.soak_ledger import Report, now


class Resources:
    def __init__(self, cluster: Cluster, report: Report, work: Path, warmup: float) -> None:
        self.cluster = cluster
        self.report = report
        self.work = work
        self.warmup = warmup

    def _sidecar_processes(self) -> list[tuple[str, int]]:
        a, b = self.cluster.a, self.cluster.b
        procs = [("sidecar-a", a.proc.pid), ("sidecar-b supervisor", b.proc.pid)]
        procs += [("sidecar-b worker", pid) for pid in b.worker_pids()]
        return procs

    def sample(self) -> None:
        t = now()
        for label, pid in self._sidecar_processes():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(int(s.split()[1]) for s in status.splitlines() if s.startswith("VmRSS"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue
            self.report.samples.setdefault((label, pid), []).append((t, rss, fds))

    def describe_fds(self, name: str) -> None:
        """What each sidecar process holds open, for a look after the run: fd kinds,
        and its TCP connections by peer port (whose port is in the legend)."""
        cluster = self.cluster
        ports = {
            cluster.a.port: "sidecar-a public",
            cluster.b.port: "sidecar-b public",
            cluster.upstream_port: "upstream",
            cluster.sentinel.port: "sentinel",
            **{node.port: node.name for node in cluster.nodes.values()},
        }
        lines = [f"ports: {ports}"]
        for label, pid in self._sidecar_processes():
            kinds: Counter[str] = Counter()
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        kinds[target.split(":")[0] if ":" in target else "file"] += 1
            lines.append(f"{label} pid {pid}: {dict(kinds)}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            lines.append(
                subprocess.run(["ss", "-tanp"], capture_output=True, text=True, timeout=10).stdout
            )
        (self.work / name).write_text("\n".join(lines) + "\n")

    async def sampler(self, stop: asyncio.Event) -> None:
        described = False
        while not stop.is_set():
            self.sample()
            if not described and now() >= self.report.started + self.warmup:
                self.describe_fds("fds-after-warmup.txt")
                described = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)

    def verdicts(self) -> tuple[list[str], list[str], bool, bool]:
        """RSS per process (one that started after the warm-up, a replaced worker, is not
        judged); open fds per instance, summed over its processes, because when a worker
        dies the kernel hands its connections to the other one."""
        warm_end = self.report.started + self.warmup
        rss_rows, rss_ok = [], True
        by_instance: dict[str, dict[float, int]] = {}
        for (label, pid), samples in sorted(self.report.samples.items()):
            instance = label.split()[0]
            for t, _, fds in samples:
                sums = by_instance.setdefault(instance, {})
                sums[t] = sums.get(t, 0) + fds
            after = [s for s in samples if s[0] >= warm_end]
            if len(after) < 6 or after[0][0] - samples[0][0] < self.warmup * 0.9:
                born = "started after warm-up" if samples[0][0] > warm_end - 5 else "too few"
                cells = f"| {label} | {pid} | {len(samples)} | - | - |"
                rss_rows.append(f"{cells} not judged ({born}) |")
                continue
            base = statistics.median(s[1] for s in after[:3])
            end = statistics.median(s[1] for s in after[-3:])
            peak = max(s[1] for s in after)
            drift = (peak - base) / base
            rss_ok &= drift < 0.10
            rss_rows.append(
                f"| {label} | {pid} | {len(samples)} | {base / 1024:.1f} -> {end / 1024:.1f} "
                f"(max {peak / 1024:.1f}) | {drift * 100:+.1f} % | "
                f"{'ok' if drift < 0.10 else 'FAIL'} |"
            )
        fd_rows, fds_ok = [], True
        for instance, sums in sorted(by_instance.items()):
            series = [sums[t] for t in sorted(sums) if t >= warm_end]
            if len(series) < 6:
                fd_rows.append(f"| {instance} | - | - | - | not judged (too few samples) |")
                continue
            # The floor of the first and of the last fifth: connections that come and go
            # with the load (probes, uploads, the upstream pool) lift single samples; a
            # leak lifts the floor.
            span = max(3, len(series) // 5)
            base = min(series[:span])
            end = min(series[-span:])
            slack = max(10.0, 0.1 * base)
            flat = abs(end - base) <= slack
            fds_ok &= flat
            fd_rows.append(
                f"| {instance} | floor {base:.0f} -> {end:.0f} | {min(series)}..{max(series)} | "
                f"±{slack:.0f} | {'ok' if flat else 'FAIL'} |"
            )
        return rss_rows, fd_rows, rss_ok, fds_ok
