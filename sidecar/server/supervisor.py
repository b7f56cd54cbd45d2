"""``--workers N``: a supervisor process and N worker processes.

The supervisor is the process the operator started. It holds the admin listener and
the embedded Redis (once), spawns the workers, replaces one that dies, and on
SIGTERM/SIGINT passes SIGTERM to every worker, waits for them to drain, then stops.

Each worker is a complete sidecar with its own Redis pool, upstream pool and key
cache. It binds the public port itself with SO_REUSEPORT, so the kernel spreads new
connections across the workers. Caches stay coherent because every worker follows
the revocation channel (revocations.py); rate-limit counters live in Redis.

Metrics use prometheus-client's multiprocess mode: every worker writes its samples to
files in a private temporary directory, and the supervisor's /metrics adds them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from sidecar.app.dispatch import Sidecar
from sidecar.config.model import Config
from sidecar.observability import logs as logsetup
from sidecar.proxy.upstream import UpstreamClient
from sidecar.redisconn.client import connect, durability
from sidecar.server.serving import (
    Server,
    admin_listener,
    bind,
    forward_auth_listener,
    log_listening,
    run_loop,
    uvicorn_config,
    warn_if_redis_down,
)

log = logging.getLogger("sidecar")

_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_START_TIMEOUT = 60.0
_TICK = 0.1
_RESPAWN_DELAY = 1.0
_SYNC_EVERY = 1.0


def supervise(
    config: Config, redis_url: str, admin_sock: socket.socket, *, example_upstream: bool
) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="callcov-sidecar-metrics-")
    # Read by prometheus-client when a worker imports it: set before any worker starts.
    os.environ[_METRICS_ENV] = metrics_dir
    try:
        supervisor = Supervisor(config, redis_url, metrics_dir)
        return run_loop(supervisor.run(admin_sock, example_upstream))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    ready: Connection
    started_at: float
    is_ready: bool = False

    def check_ready(self) -> bool:
        if not self.is_ready and self.ready.poll():
            with contextlib.suppress(EOFError, OSError):
                self.is_ready = self.ready.recv() == "ready"
        return self.is_ready


class Supervisor:
    def __init__(self, config: Config, redis_url: str, metrics_dir: str) -> None:
        self._config = config
        self._redis_url = redis_url
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._restarts = 0
        self._stopping = asyncio.Event()

    async def run(self, admin_sock: socket.socket, example_upstream: bool) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        config = self._config
        redis = connect(self._redis_url, config.redis)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metrics_dir)  # type: ignore[no-untyped-call]
        registry.register(_WorkerCollector(self))
        try:
            await warn_if_redis_down(redis)
            if not await self._start_all():
                told_to_stop = self._stopping.is_set()
                status = await self._stop_all()
                return status if told_to_stop else 1
            async with admin_listener(
                config,
                admin_sock,
                redis=redis,
                durability=durability(self._redis_url, config.redis),
                upstream=UpstreamClient(config.upstream, config.server.max_body_bytes),
                scrape=lambda: generate_latest(registry),
                problems=self._problems,
                example_upstream=example_upstream,
            ):
                log_listening(config)
                await self._watch()
                return await self._stop_all()
        finally:
            await redis.aclose()

    def _problems(self) -> list[str]:
        if self._stopping.is_set():
            return ["shutting down"]
        alive = self.alive()
        wanted = self._config.server.workers
        return [] if alive == wanted else [f"{alive} of {wanted} workers running"]

    def alive(self) -> int:
        return sum(1 for w in self._workers if w.process.is_alive() and w.check_ready())

    def _spawn(self, slot: int) -> _Worker:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self._config, self._redis_url, send, os.getpid()),
            name=f"callcov-sidecar-worker-{slot}",
        )
        process.start()
        send.close()
        return _Worker(slot, process, receive, time.monotonic())

    async def _start_all(self) -> bool:
        """Start every worker; False (with the reason logged) if one fails to start."""
        self._workers = [self._spawn(slot) for slot in range(self._config.server.workers)]
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(w.check_ready() for w in self._workers):
            for worker in self._workers:
                if not worker.check_ready() and worker.process.exitcode is not None:
                    log.error(
                        "worker %d exited with status %s during start-up",
                        worker.slot, worker.process.exitcode,
                    )  # fmt: skip
                    return False
            if self._stopping.is_set():
                return False
            if time.monotonic() > deadline:
                log.error("workers did not start within %.0fs", _START_TIMEOUT)
                return False
            await asyncio.sleep(_TICK / 2)
        return True

    async def _watch(self) -> None:
        """Until told to stop: replace workers that die."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _TICK)
            for i, worker in enumerate(self._workers):
                code = worker.process.exitcode
                if code is None or self._stopping.is_set():
                    continue
                if time.monotonic() - worker.started_at < _RESPAWN_DELAY:
                    continue  # a worker that dies at once is replaced at most once a second
                log.error(
                    "worker %d (pid %s) exited with status %s; starting a new one",
                    worker.slot, worker.process.pid, code,
                )  # fmt: skip
                self._forget(worker)
                self._workers[i] = self._spawn(worker.slot)
                self._restarts += 1

    async def _stop_all(self) -> int:
        """SIGTERM every worker, wait for them to drain; 0 when all exited cleanly."""
        self._stopping.set()
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        grace = self._config.server.graceful_timeout_seconds + 10
        deadline = time.monotonic() + grace
        while any(w.process.is_alive() for w in self._workers) and time.monotonic() < deadline:
            await asyncio.sleep(_TICK)
        status = 0
        for worker in self._workers:
            if worker.process.is_alive():
                log.error("worker %d did not stop within %.0fs; killing it", worker.slot, grace)
                worker.process.kill()
                status = 1
            worker.process.join()
            if worker.process.exitcode != 0:
                status = 1
            self._forget(worker)
        return status

    def _forget(self, worker: _Worker) -> None:
        worker.ready.close()
        if worker.process.pid is not None:
            mark_process_dead(worker.process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]


class _WorkerCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "sidecar_workers", "Worker processes serving", value=self._supervisor.alive()
        )
        yield CounterMetricFamily(
            "sidecar_worker_restarts",
            "Workers replaced after dying",
            value=self._supervisor._restarts,
        )


def worker_main(config: Config, redis_url: str, ready: Connection, supervisor_pid: int) -> None:
    """A worker process's entry point (spawned: a fresh interpreter)."""
    logsetup.configure(config.logging.level)
    raise SystemExit(run_loop(_serve_worker(config, redis_url, ready, supervisor_pid)))


async def _serve_worker(
    config: Config, redis_url: str, ready: Connection, supervisor_pid: int
) -> int:
    sock = bind(config.server.host, config.server.port, reuse_port=True)
    decisions = config.forward_auth
    decisions_sock = (
        bind(decisions.host, decisions.port, reuse_port=True) if decisions.enabled else None
    )
    sidecar = Sidecar(config, redis_url)

    def started() -> None:
        ready.send("ready")
        ready.close()

    public = Server(
        uvicorn_config(sidecar, config, lifespan="on", hardened=True, on_head=sidecar.on_head),
        on_started=started,
        freeze_heap=True,
    )

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(_SYNC_EVERY)
            sidecar.metrics.sync()
            if os.getppid() != supervisor_pid:  # the supervisor is gone: do not linger
                log.error("supervisor %d is gone; stopping", supervisor_pid)
                public.should_exit = True

    task = asyncio.create_task(housekeeping())
    try:
        async with forward_auth_listener(config, decisions_sock, sidecar.forward_auth, public):
            await public.serve(sockets=[sock])
    except SystemExit:
        return 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sidecar.metrics.sync()
    return 0 if public.started else 1
