"""The soak's set of processes, started and stopped together: a Redis master and its
replica, one Sentinel, the recording upstream and two sidecars; and whether all of them
answer (who Sentinel says is master, and both sidecars' /readyz)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.harness import ROOT, free_port
from bench.soak_rig import SERVICE, Proc, RedisNode, Sentinel, SidecarInstance


class Cluster:
    def __init__(self, work: Path, record: Path) -> None:
        self.work = work
        self.record = record
        self.procs: list[Proc] = []

    def start(self) -> None:
        self.master = RedisNode(self.work, "redis-a")
        self.master.proc.start()
        self.replica = RedisNode(self.work, "redis-b", replica_of=self.master.port)
        self.replica.proc.start()
        self.nodes = {self.master.port: self.master, self.replica.port: self.replica}
        self.sentinel = Sentinel(self.work, self.master.port)
        self.sentinel.proc.start()
        self.upstream_port = free_port()
        self.upstream = Proc(
            "upstream",
            [
                sys.executable,
                str(ROOT / "bench" / "soak_upstream.py"),
                "--port",
                str(self.upstream_port),
                "--record",
                str(self.record),
            ],
            self.work / "upstream.log",
        )
        self.upstream.start()
        self.a = SidecarInstance(self.work, "sidecar-a", self.upstream_port, self.sentinel.port, 1)
        self.b = SidecarInstance(self.work, "sidecar-b", self.upstream_port, self.sentinel.port, 2)
        self.procs = [
            self.master.proc,
            self.replica.proc,
            self.sentinel.proc,
            self.upstream,
            self.a.proc,
            self.b.proc,
        ]
        self.a.proc.start()
        self.b.proc.start()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()

    async def master_port(self) -> int | None:
        client = Redis(port=self.sentinel.port, socket_timeout=1)
        try:
            found = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(found[1]) if found else None
        except Exception:
            return None
        finally:
            await client.aclose()

    async def healthy(self) -> list[str]:
        """What is not back yet; [] when everything answers."""
        problems = []
        port = await self.master_port()
        ok = False
        if port is not None:
            client = Redis(port=port, socket_timeout=1)
            try:
                role = await client.execute_command("ROLE")
                ok = role[0] in (b"master", "master")
            except Exception:
                ok = False
            finally:
                await client.aclose()
        if not ok:
            problems.append("redis master")
        for instance in (self.a, self.b):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", instance.admin_port), 2
                )
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = await asyncio.wait_for(reader.read(64), 4)
                writer.close()
                if b" 200 " not in head[:16]:
                    problems.append(f"{instance.name} /readyz")
            except Exception:
                problems.append(f"{instance.name} admin")
        return problems

    async def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.healthy():
                return True
            await asyncio.sleep(0.2)
        return False
