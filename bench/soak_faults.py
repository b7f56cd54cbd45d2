"""The chaos the soak injects, one fault at a time, evenly spaced over the load: the
Redis master killed or frozen, a Sentinel failover, the upstream restarted, a sidecar
worker killed; each fault's window lasts until everything is healthy again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from typing import Any

from redis.asyncio import Redis

from bench.soak_cluster import Cluster
from bench.soak_ledger import FAULT_KINDS, Report, now
from bench.soak_rig import SERVICE


class Chaos:
    def __init__(self, cluster: Cluster, report: Report, stop: asyncio.Event) -> None:
        self.cluster = cluster
        self.report = report
        self.stop = stop

    async def run(self, minutes: float, duration: float, load_started: float) -> None:
        """One fault a minute (at least one of each kind), from 20 s into the load to
        30 s before its end."""
        count = max(len(FAULT_KINDS), round(minutes))
        first, last = 20.0, duration - 30.0
        spacing = max(10.0, (last - first) / count)
        for index in range(count):
            at = load_started + first + index * spacing
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, at - time.monotonic()))
            if self.stop.is_set() or time.monotonic() - load_started > last:
                return
            await self.fault(FAULT_KINDS[index % len(FAULT_KINDS)])

    async def fault(self, kind: str) -> None:
        cluster = self.cluster
        entry: dict[str, Any] = {"kind": kind, "start": now(), "end": None, "note": ""}
        self.report.faults.append(entry)
        print(f"[t+{now() - self.report.started:6.1f}s] fault: {kind}", flush=True)
        if kind in ("redis_kill", "redis_stop"):
            port = await cluster.master_port()
            node = cluster.nodes.get(port or -1)
            if node is None:
                entry["note"] = "no master known"
            elif kind == "redis_kill":
                node.proc.signal(signal.SIGKILL)
                node.proc.popen.wait(5)  # type: ignore[union-attr]
                await asyncio.sleep(2.0)
                node.proc.start()
                entry["note"] = f"{node.name} killed, restarted after 2 s"
            else:
                node.proc.signal(signal.SIGSTOP)
                await asyncio.sleep(5.0)
                node.proc.signal(signal.SIGCONT)
                entry["note"] = f"{node.name} frozen 5 s"
        elif kind == "failover":
            before = await cluster.master_port()
            client = Redis(port=cluster.sentinel.port, socket_timeout=5)
            try:
                await client.execute_command("SENTINEL", "FAILOVER", SERVICE)
            except Exception as exc:
                entry["note"] = f"SENTINEL FAILOVER refused: {exc}"
            finally:
                await client.aclose()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and await cluster.master_port() == before:
                await asyncio.sleep(0.2)
            after = await cluster.master_port()
            nodes = cluster.nodes
            entry["note"] = entry["note"] or (
                f"master {nodes[before].name if before in nodes else before} -> "
                f"{nodes[after].name if after in nodes else after}"
            )
        elif kind == "upstream_restart":
            cluster.upstream.stop()
            cluster.upstream.start()
            entry["note"] = "SIGTERM, started again on the same port"
        elif kind == "worker_kill":
            workers = cluster.b.worker_pids()
            if workers:
                victim = random.choice(workers)
                os.kill(victim, signal.SIGKILL)
                entry["note"] = f"sidecar-b worker pid {victim} SIGKILLed"
                await asyncio.sleep(0.5)  # let the supervisor notice before asking /readyz
            else:
                entry["note"] = "no worker found"
        recovered = await cluster.wait_healthy(60)
        entry["end"] = now()
        entry["recovered"] = recovered
        if not recovered:
            entry["note"] += f"; NOT healthy after 60 s: {await cluster.healthy()}"
