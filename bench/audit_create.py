"""The key-management create path with the audit trail, against a build without it
(issue 27: at most 15 % more). ``POST /api/v1/api-keys/`` with a JWT, each request a
new user (so the active-key limit never refuses), sequentially (latency) and from
``--concurrency`` clients (throughput), on a fresh redis-server and one sidecar per
build (attack_rig.py), in interleaved rounds. Also the CPU time the sidecar and
redis-server spent per create (from /proc): on a busy machine wall-clock figures
move with the neighbours, CPU per request much less. ``--baseline DIR``: a checkout of the
build to compare with (e.g. ``git worktree add --detach /tmp/sidecar-noaudit <commit
before the audit trail>``), run with its own code (``PYTHONPATH``). Prints medians and
Redis memory per 1,000 events. It measures; it asserts nothing.

    .venv/bin/python -m bench.audit_create --baseline /tmp/sidecar-noaudit [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import httpx
import jwt
import redis

from bench.attack_rig import Rig, running

JWT_SECRET = "attack-" * 8  # attack_rig.py's
KEYS = "/api/v1/api-keys/"


def _token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, JWT_SECRET, "HS256")


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _creates(
    rig: Rig, tag: str, requests: int, concurrency: int
) -> tuple[float, float, float]:
    """(p50 latency of sequential creates in ms, creates/s from ``concurrency`` clients,
    CPU µs of the sidecar and Redis per create over both)."""
    tokens = [_token(f"{tag}-{i}") for i in range(requests * 2)]
    base = f"http://127.0.0.1:{rig.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def create(token: str) -> float:
            started = time.perf_counter()
            answer = await http.post(KEYS, json={}, headers={"Authorization": f"Bearer {token}"})
            if answer.status_code != 201:
                raise RuntimeError(f"create answered {answer.status_code}: {answer.text}")
            return time.perf_counter() - started

        for token in tokens[:20]:  # warm-up
            await create(token)
        cpu = _cpu(rig.pid) + _cpu(rig.redis_pid)
        sequential = [await create(t) for t in tokens[20:requests]]
        queue = list(tokens[requests:])

        async def client() -> None:
            while queue:
                await create(queue.pop())

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        rate = requests / (time.perf_counter() - started)
        used = _cpu(rig.pid) + _cpu(rig.redis_pid) - cpu
    return statistics.median(sequential) * 1000, rate, used / (2 * requests - 20) * 1e6


def _round(
    source: str | None, tag: str, args: argparse.Namespace
) -> tuple[float, float, float, Any]:
    override = {
        "auth": {"api_keys": {"max_active_per_user": 1000}},
        # INFO, as in production: the audit build also writes each event's log line.
        "logging": {"level": "INFO", "access_log": False},
    }
    with running(override, prefix="audit-create-", source=source) as rig:
        p50, rate, cpu = asyncio.run(_creates(rig, tag, args.requests, args.concurrency))
        memory = _memory(rig)
    return p50, rate, cpu, memory


def _memory(rig: Rig) -> tuple[int, int] | None:
    """(events, bytes of the chain and every key's index), when the build audits."""
    client = redis.Redis(port=rig.redis_port)
    try:
        events = client.xlen("callcov:{callcov-keys}:audit")
        if not events:
            return None
        total = client.memory_usage("callcov:{callcov-keys}:audit", samples=0) or 0
        for name in client.scan_iter(match="callcov:{callcov-keys}:audit:key:*", count=1000):
            total += client.memory_usage(name, samples=0) or 0
        return events, total
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a checkout without the audit trail")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    builds: dict[str, str | None] = {"audit": None}
    if args.baseline:
        builds["baseline"] = args.baseline
    found: dict[str, list[tuple[float, float, float]]] = {name: [] for name in builds}
    memory = None
    for number in range(args.rounds):
        order = list(builds.items())
        if number % 2:
            order.reverse()
        for name, source in order:
            p50, rate, cpu, used = _round(source, f"{name}-{number}", args)
            memory = memory or used
            found[name].append((p50, rate, cpu))
            print(
                f"round {number + 1} {name:8}: p50 {p50:6.2f} ms  {rate:7.1f} creates/s  "
                f"{cpu:6.0f} µs CPU/create"
            )
    print()
    medians = {
        name: tuple(statistics.median(row[i] for row in rows) for i in range(3))
        for name, rows in found.items()
    }
    for name, (p50, rate, cpu) in medians.items():
        print(
            f"{name:8}: sequential p50 {p50:.2f} ms, {rate:.1f} creates/s at "
            f"c{args.concurrency}, {cpu:.0f} µs CPU per create"
        )
    if "baseline" in medians:
        (a_p50, a_rate, a_cpu), (b_p50, b_rate, b_cpu) = medians["audit"], medians["baseline"]
        print(
            f"audit / baseline: latency {a_p50 / b_p50:.3f}x, throughput {a_rate / b_rate:.3f}x, "
            f"CPU per create {a_cpu / b_cpu:.3f}x"
        )
    if memory is not None:
        events, size = memory
        print(f"Redis memory: {size * 1000 / events / 1024:.0f} KiB per 1,000 events ({events})")


if __name__ == "__main__":
    main()
