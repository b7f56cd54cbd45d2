"""Header flood (issue 10): what unfinished request heads cost the sidecar.

Starts a redis-server, a tiny upstream and one sidecar (one worker) on loopback ports.
Then ``--flooders`` connections each push ``--mib`` MiB of one never-ending header
line, unauthenticated (reconnecting whenever the sidecar refuses and closes), while
another client sends GETs to a public path one after the other. Prints the sidecar's
RSS before, at its peak during and after the flood (sampled every 10 ms from
/proc/PID/status), how the flood was refused, and the other client's latencies. It
measures; it asserts nothing.

    .venv/bin/python -m bench.header_flood [--flooders 4] [--mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.attack_rig import running

_PIECE = 64 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def flood(port: int, total: int, outcome: dict[str, int]) -> None:
    """Push ``total`` bytes of unfinished header, reconnecting after each refusal."""
    sent = 0
    piece = b"a" * _PIECE
    while sent < total:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /public/x HTTP/1.1\r\nHost: flood\r\nX-Flood: ")
        try:
            while sent < total:
                writer.write(piece)
                await writer.drain()
                sent += _PIECE
                if reader.at_eof() or writer.is_closing():
                    break
        except (ConnectionError, OSError):
            pass
        try:
            answer = await asyncio.wait_for(reader.read(200), 1.0)
            kind = f"answered {answer[9:12].decode(errors='replace')}" if answer else "closed"
        except TimeoutError:
            kind = "still open (not refused)"
        except (ConnectionError, OSError):
            kind = "reset (refused; the answer was lost to unread bytes)"
        outcome[kind] = outcome.get(kind, 0) + 1
        writer.close()


async def other_client(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    request = b"GET /public/ok HTTP/1.1\r\nHost: other\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
    writer.close()


async def measure(port: int, pid: int, flooders: int, mib: int) -> None:
    peak = [rss_kib(pid)]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.01)

    before = rss_kib(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcome: dict[str, int] = {}
    baseline: list[float] = []
    quiet = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, quiet.set)
    await other_client(port, quiet, baseline)
    latencies: list[float] = []
    stop = asyncio.Event()
    client = asyncio.create_task(other_client(port, stop, latencies))
    started = time.perf_counter()
    await asyncio.gather(*(flood(port, mib * 1024 * 1024, outcome) for _ in range(flooders)))
    elapsed = time.perf_counter() - started
    stop.set()
    await client
    sampling = False
    sampler.join()
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    print(f"flood: {flooders} connections x {mib} MiB of unfinished header, {elapsed:.2f} s")
    print(f"sidecar RSS: before {before / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
          f"(+{(peak[0] - before) / 1024:.1f} MiB), after {after / 1024:.1f} MiB")  # fmt: skip
    print(f"flood connections by answer: {dict(sorted(outcome.items()))}")
    for label, values in (("before the flood (1 s)", baseline), ("during the flood", latencies)):
        if not values:
            print(f"other client {label}: no request served")
            continue
        ms = sorted(x * 1000 for x in values)
        print(f"other client {label}: {len(ms)} requests served one after another, "
              f"median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooders", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    with running({}, prefix="header-flood-") as rig:
        asyncio.run(measure(rig.port, rig.pid, args.flooders, args.mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
