"""Leaked and guessed keys (issue 12): what a guessing flood and a secret-scanning batch
cost. It measures; it asserts nothing.

Starts its own redis-server, the tests' recording upstream and sidecars (one worker
each) on loopback ports, using the test harness. Then:

- flood: ``--flood`` distinct checksum-valid unknown keys from one client, pipelined on
  one connection, against a sidecar with ``auth.failed_auth`` on and one with it off;
  prints the sidecar's CPU seconds (utime + stime from /proc) and the Redis lookups
  (``INFO commandstats`` HGET calls) each cost;
- batch: ``--rounds`` signed reports of ``--batch`` real keys each, posted to the
  secret-scanning endpoint; prints the end-to-end time of each.

    .venv/bin/python -m bench.leaked_keys [--flood 10000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aioredis

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from tests.harness import (
    HASH_SECRET,
    RedisProcess,
    ServerThread,
    SidecarProcess,
    base_config,
    merge,
)
from tests.test_failed_auth import command_calls, cpu_seconds, pipelined_statuses
from tests.test_secret_scanning import Signer, report
from tests.upstream_app import RecordingUpstream


def flood(redis_server: RedisProcess, upstream: str, work: Path, count: int, on: bool) -> str:
    config = merge(
        base_config(redis_url=redis_server.url, upstream_url=upstream),
        {"auth": {"failed_auth": {"enabled": on, "requests": 20, "per_seconds": 3600}}},
    )
    process = SidecarProcess(config, work).start()
    try:
        assert process.process is not None
        keys = [keyformat.generate() for _ in range(count)]
        client = redis_server.client()
        client.config_resetstat()
        cpu = cpu_seconds(process.process.pid)
        started = time.perf_counter()
        statuses = pipelined_statuses(config["server"]["port"], keys)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process.process.pid) - cpu
        lookups = command_calls(client, "hget")
    finally:
        process.stop()
    counted = {s: statuses.count(s) for s in sorted(set(statuses))}
    return (
        f"failed_auth {'on ' if on else 'off'}: {count} unknown keys in {elapsed:.2f} s, "
        f"sidecar CPU {cpu:.2f} s ({cpu / count * 1e6:.0f} µs each), {lookups} HGETs, {counted}"
    )


def batches(
    redis_server: RedisProcess, upstream: str, work: Path, size: int, rounds: int
) -> list[float]:
    signer = Signer()
    keys_file = work / "github-keys.json"
    keys_file.write_bytes(orjson.dumps({"public_keys": [signer.entry()]}))
    config = merge(
        base_config(redis_url=redis_server.url, upstream_url=upstream),
        {"secret_scanning": {"enabled": True, "public_keys_file": str(keys_file)}},
    )

    async def create(user: str) -> list[str]:
        client = aioredis.Redis.from_url(redis_server.url)
        store = KeyStore(client, KeyHasher(HASH_SECRET.encode()), size, retry_after=1)
        try:
            return [(await store.create(user, None)).api_key for _ in range(size)]
        finally:
            await client.aclose()

    process = SidecarProcess(config, work).start()
    timings = []
    try:
        for round_ in range(rounds):
            body = report(*asyncio.run(create(f"bench-{round_}")))
            started = time.perf_counter()
            answer = httpx.post(
                process.url + "/api/v1/secret-scanning/",
                content=body,
                headers=signer.headers(body),
                timeout=60,
            )
            timings.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    finally:
        process.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        upstream = ServerThread(RecordingUpstream()).start()
        try:
            with RedisProcess(work) as redis_server:
                for on in (True, False):
                    print(flood(redis_server, upstream.url, work, args.flood, on), flush=True)
                timings = batches(redis_server, upstream.url, work, args.batch, args.rounds)
        finally:
            upstream.stop()
    shown = ", ".join(f"{t:.3f}" for t in timings)
    print(
        f"secret scanning: {args.batch} real keys per signed report, end to end: {shown} s "
        f"(median {statistics.median(timings):.3f} s)"
    )


if __name__ == "__main__":
    main()
