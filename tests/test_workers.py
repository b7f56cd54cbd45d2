"""``serve --workers 2``: processes sharing the public port, each with its own key cache,
kept coherent by the revocation channel; one admin listener aggregating the metrics.

Which worker answers is the kernel's choice (SO_REUSEPORT hashes each new connection),
so the tests use a fresh connection per request and read the worker's pid from the
access log, matched by request id.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Api
from tests.harness import SidecarProcess, metric, wait_until


@pytest.fixture(scope="module")
def workers(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    workdir = tmp_path_factory.mktemp("workers")
    process = SidecarProcess(config_for(), workdir, ("--workers", "2")).start(timeout=60)
    yield process
    process.stop()


def pids_by_request(process: SidecarProcess, tag: str) -> dict[str, int]:
    """request id -> pid of the worker that logged it, for request ids starting with tag."""
    found = {}
    for line in process.logs().splitlines():
        if tag in line and line.startswith("{"):
            entry = json.loads(line)
            if str(entry.get("request_id", "")).startswith(tag):
                found[entry["request_id"]] = entry["pid"]
    return found


def fresh_get(process: SidecarProcess, path: str, key: str, request_id: str) -> int:
    """One request on a new connection (so the kernel picks a worker anew). http.client:
    a new httpx client per request would spend ~80 ms building an SSL context."""
    connection = http.client.HTTPConnection("127.0.0.1", process.config["server"]["port"], 10)
    try:
        connection.request("GET", path, headers={"X-API-Key": key, "X-Request-ID": request_id})
        return connection.getresponse().status
    finally:
        connection.close()


def warm_both(process: SidecarProcess, key: str, tag: str) -> int:
    """Requests on fresh connections until both workers have verified (and cached) the
    key; how many were sent."""
    sent = 0
    while len(set(pids_by_request(process, tag).values())) < 2:
        assert sent < 200, "the kernel sent 200 fresh connections to one worker"
        for _ in range(10):
            assert fresh_get(process, "/warm", key, f"{tag}-{sent}") == 200
            sent += 1
        wait_until(lambda n=sent: len(pids_by_request(process, tag)) == n, timeout=5)
    return sent


def test_two_workers_serve_and_admin_aggregates(workers: SidecarProcess) -> None:
    assert metric(workers, "sidecar_workers") == 2
    api = Api(workers.url)
    key = api.create_key(f"workers-{time.monotonic_ns()}")["api_key"]
    tag = f"warm-{uuid.uuid4().hex[:8]}"
    sent = warm_both(workers, key, tag)
    served = set(pids_by_request(workers, tag).values())
    assert workers.process is not None
    assert len(served) == 2 and workers.process.pid not in served  # not the supervisor
    # Counters of both workers, added up by the supervisor's /metrics; a worker copies its
    # own into its metrics file every second.
    wait_until(
        lambda: metric(workers, "sidecar_requests_total", route="proxy", status="200") == sent, 3
    )
    assert metric(workers, "sidecar_requests_total", route="api_keys", status="201") == 1
    assert metric(workers, "sidecar_in_flight_requests") == 0  # as of the sync that counted
    wait_until(lambda: metric(workers, "sidecar_key_cache_total", result="miss") == 2, 3)
    api.http.close()


def test_a_revocation_through_one_worker_reaches_the_other_within_1s(
    workers: SidecarProcess,
) -> None:
    api = Api(workers.url)
    user = f"workers-{time.monotonic_ns()}"
    created = api.create_key(user)
    key = created["api_key"]
    warm_both(workers, key, f"warm-{uuid.uuid4().hex[:8]}")

    deleted = api.http.delete(f"/api/v1/api-keys/{created['id']}", headers=api.bearer(user))
    assert deleted.status_code == 200
    revoked_at = time.monotonic()
    after = f"after-{uuid.uuid4().hex[:8]}"
    statuses: dict[str, tuple[float, int]] = {}
    i = 0
    while time.monotonic() - revoked_at < 1.5:
        rid = f"{after}-{i}"
        started = time.monotonic() - revoked_at
        statuses[rid] = (started, fresh_get(workers, "/after", key, rid))
        i += 1
    wait_until(lambda: len(pids_by_request(workers, after)) == len(statuses), timeout=5)
    pids = pids_by_request(workers, after)
    late = {rid: status for rid, (started, status) in statuses.items() if started >= 1.0}
    assert late and set(late.values()) == {401}, "a worker still accepted the revoked key"
    assert len({pids[rid] for rid in late}) == 2, "both workers must be probed after 1 s"
    first_401 = {pids[rid] for rid, (_, status) in statuses.items() if status == 401}
    assert len(first_401) == 2
    api.http.close()


def test_a_worker_that_dies_is_replaced(workers: SidecarProcess) -> None:
    tag = f"probe-{uuid.uuid4().hex[:8]}"
    token_user = f"workers-{time.monotonic_ns()}"
    api = Api(workers.url)
    key = api.create_key(token_user)["api_key"]
    for i in range(40):
        fresh_get(workers, "/probe", key, f"{tag}-{i}")
    wait_until(lambda: len(pids_by_request(workers, tag)) == 40, timeout=5)
    victim = next(iter(set(pids_by_request(workers, tag).values())))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: metric(workers, "sidecar_worker_restarts_total") == 1, timeout=10)
    wait_until(lambda: metric(workers, "sidecar_workers") == 2, timeout=30)
    for i in range(20):
        assert fresh_get(workers, "/probe", key, f"{tag}-after-{i}") == 200
    api.http.close()


def test_sigterm_stops_every_worker_and_exits_0(workers: SidecarProcess) -> None:
    tag = f"last-{uuid.uuid4().hex[:8]}"
    api = Api(workers.url)
    key = api.create_key(f"workers-{time.monotonic_ns()}")["api_key"]
    for i in range(40):
        fresh_get(workers, "/last", key, f"{tag}-{i}")
    wait_until(lambda: len(pids_by_request(workers, tag)) == 40, timeout=5)
    worker_pids = set(pids_by_request(workers, tag).values())
    api.http.close()
    assert workers.stop() == 0
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert '"message":"stopped"' in workers.logs()
