"""The sidecar benchmark's entry point (issue 6): ``bench/run`` runs ``python -m bench``
from the repo root; see bench/README.md.

Starts everything it measures as its own foreground processes on loopback ports
(nginx upstream, redis-server, sidecars, asgiproxy), drives them with wrk in
interleaved rounds, and writes a markdown report to bench/results/. Every process it
started is stopped on exit, also on CTRL-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator

import httpx

from bench.context import Run
from bench.experiments import instruction_test, memory_test, revocation_test, websocket_test
from bench.harness import shown
from bench.options import parse_options
from bench.report import render
from bench.throughput import throughput, usage_note


def run_all(run: Run) -> int:
    """Every part of the run in order, then the report (written and printed)."""
    run.log(f"work dir {shown(run.work)}")
    if run.load.wrk is None:
        run.log("wrk not found: using the Python fallback load generator (labelled)")
    redis_url = run.services.start_redis()
    upstream = run.services.start_upstream()
    run.log(f"upstream: {run.services.upstream_label} at {upstream}; redis at {redis_url}")
    throughput(run, redis_url, upstream)
    usage_note(run, redis_url, upstream)
    if run.wanted("memory"):
        memory_test(run, redis_url)
    if run.wanted("websocket"):
        websocket_test(run, redis_url)
    if run.wanted("revocation"):
        revocation_test(run, redis_url, upstream)
    if run.wanted("instructions"):
        instruction_test(run, redis_url, upstream)
    text = render(run)
    run.o.out.parent.mkdir(parents=True, exist_ok=True)
    run.o.out.write_text(text + "\n")
    print("\n" + text)
    run.log(f"wrote {shown(run.o.out)}")
    return 0


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM behaves like CTRL-C, so the cleanup below runs for both."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    run = Run(options)
    failed = True
    try:
        with interrupts_raise():
            code = run_all(run)
            failed = False
            return code
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this run started", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, httpx.HTTPError, OSError) as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        print(f"logs kept in {run.work}", file=sys.stderr)
        return 1
    finally:
        run.services.procs.stop_all()
        if not failed and not options.keep_work:
            shutil.rmtree(run.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
