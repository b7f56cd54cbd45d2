"""Slowloris (issue 24 row 5): a flood of stalled request heads against the read timeouts.

Starts a redis-server, a tiny upstream and one sidecar (attack_rig.py) with
``server.client_header_timeout_seconds`` = ``--header-timeout`` (60, the default, unless
told). Opens ``--connections`` connections, each sending an unfinished head and then one
more header line every ``--trickle`` seconds (so a timeout between reads would never
fire: only one on the whole head does). Meanwhile another client sends GETs to a public
path one after the other. Prints how long each flood connection lived (from its first
byte to the sidecar's close), how many outlived the head timeout plus ``--slack``, the
sidecar's open fds and RSS before, at the peak and after, and the other client's
requests (count, latency). It measures; it asserts nothing.

    .venv/bin/python -m bench.slowloris [--connections 5000] [--header-timeout 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time

from bench.attack_rig import Rig, running

_BATCH = 250  # connections opened at once (the listen backlog is 2048)


async def stalled_head(port: int, trickle: float, lived: list[float], failed: list[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        failed.append(type(exc).__name__)
        return
    started = time.monotonic()
    writer.write(b"GET /public/x HTTP/1.1\r\nHost: slowloris\r\n")
    try:
        while True:
            try:
                if await asyncio.wait_for(reader.read(1024), trickle) == b"":
                    break  # closed by the sidecar
            except TimeoutError:
                writer.write(b"X-Still-Here: 1\r\n")
    except OSError:
        pass  # reset: closed all the same
    lived.append(time.monotonic() - started)
    writer.close()


async def honest_client(port: int, stop: asyncio.Event, latencies: list[float]) -> int:
    """GETs one after another on a keep-alive connection; returns the failures."""
    request = b"GET /public/ok HTTP/1.1\r\nHost: honest\r\n\r\n"
    failures = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while not stop.is_set():
                started = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            failures += 1
    return failures


def _summary(values: list[float], unit: float = 1.0) -> str:
    ordered = sorted(v * unit for v in values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return f"min {ordered[0]:.2f}, median {median:.2f}, p99 {p99:.2f}, max {ordered[-1]:.2f}"


async def measure(rig: Rig, args: argparse.Namespace) -> None:
    peak = {"fds": rig.open_fds(), "rss": rig.status("VmRSS")}
    before = dict(peak)
    sampling = True

    def sample() -> None:
        while sampling:
            peak["fds"] = max(peak["fds"], rig.open_fds())
            peak["rss"] = max(peak["rss"], rig.status("VmRSS"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stop = asyncio.Event()
    latencies: list[float] = []
    honest = asyncio.create_task(honest_client(rig.port, stop, latencies))
    lived: list[float] = []
    failed: list[str] = []
    started = time.monotonic()
    flood: list[asyncio.Task[None]] = []
    for first in range(0, args.connections, _BATCH):
        for _ in range(min(_BATCH, args.connections - first)):
            flood.append(asyncio.create_task(stalled_head(rig.port, args.trickle, lived, failed)))
        await asyncio.sleep(0)  # let the batch connect before the next one
        await asyncio.sleep(0.05)
    opened = time.monotonic() - started
    limit = args.header_timeout + args.slack
    _, pending = await asyncio.wait(flood, timeout=limit + opened)
    elapsed = time.monotonic() - started
    stop.set()
    failures = await honest
    sampling = False
    sampler.join()
    for task in pending:
        task.cancel()
    await asyncio.sleep(0.5)
    after = {"fds": rig.open_fds(), "rss": rig.status("VmRSS")}

    print(f"flood: {args.connections} stalled heads (a header line every {args.trickle:g} s), "
          f"opened in {opened:.1f} s; header timeout {args.header_timeout:g} s")  # fmt: skip
    if failed:
        print(f"  connections that could not open: {len(failed)} ({sorted(set(failed))})")
    within = sum(1 for t in lived if t <= limit)
    total = len(lived) + len(pending)
    print(f"  closed by the sidecar within the timeout + {args.slack:g} s: {within} of "
          f"{total}; still open after {elapsed:.1f} s: {len(pending)}")  # fmt: skip
    if lived:
        print(f"  lifetime of a flood connection (s): {_summary(lived)}")
    print(f"sidecar open fds: before {before['fds']}, peak {peak['fds']}, after {after['fds']}")
    print(f"sidecar RSS: before {before['rss'] / 1024:.1f} MiB, peak {peak['rss'] / 1024:.1f} "
          f"MiB, after {after['rss'] / 1024:.1f} MiB")  # fmt: skip
    if latencies:
        print(f"honest client: {len(latencies)} requests served one after another during the "
              f"flood ({elapsed:.0f} s), {failures} failed; latency (ms): "
              f"{_summary(latencies, 1000)}")  # fmt: skip
    else:
        print(f"honest client: no request served, {failures} failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--header-timeout", type=float, default=60.0)
    parser.add_argument("--trickle", type=float, default=5.0)
    parser.add_argument("--slack", type=float, default=5.0)
    args = parser.parse_args()
    server = {"client_header_timeout_seconds": args.header_timeout}
    with running({"server": server}, prefix="slowloris-") as rig:
        asyncio.run(measure(rig, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
