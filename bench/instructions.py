"""Instructions per request of a server under callgrind: a measure that repeats.

On a shared 2-core machine the same build's req/s and latency vary by up to ~20 %
between processes, which hides a change of a few per cent. Instructions counted by
valgrind's callgrind repeat to ~0.1 % for the same build and requests, whatever else
the machine does. They count user-space work only (not syscalls, wake-ups or cache
misses), so they complement the timings: they tell whether a change made the
sidecar's own work smaller, not what a client feels.

The server runs under ``valgrind --tool=callgrind --instr-atstart=no``; after a
warm-up, counting is switched on for ``requests`` sequential keep-alive requests
(c1) and the total is read from the dump.
"""

from __future__ import annotations

import glob
import http.client
import os
import shutil
import subprocess
from pathlib import Path

WARM_UP = 300


def available() -> str | None:
    """Why instructions cannot be counted here, or None when they can."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def wrapper(out: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, counting nothing yet."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def per_request(pid: int, out: Path, port: int, path: str, key: str, requests: int) -> float:
    """Instructions per request of the server ``pid`` (started with ``wrapper(out)``)."""
    for stale in glob.glob(f"{out}*"):
        os.remove(stale)
    _send(port, path, key, WARM_UP)
    _control("-i", "on", pid)
    _send(port, path, key, requests)
    _control("-d", pid)  # dumps the counts so far, then resets them
    _control("-i", "off", pid)
    totals = [_total(Path(dump)) for dump in glob.glob(f"{out}*")]
    return max(totals, default=0) / requests


def _send(port: int, path: str, key: str, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(count):
            connection.request("GET", path, headers={"X-API-Key": key})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"instructions: {path} answered {response.status}")
    finally:
        connection.close()


def _control(*args: str | int) -> None:
    subprocess.run(
        ["callgrind_control", *map(str, args)], check=True, capture_output=True, timeout=60
    )


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0
