"""Revocation through the cached nginx front (``nginx_fa_cached``): how long a revoked
key is still let through when nginx may serve a cached allow for
``forward_auth.cache_seconds`` (issue 30's bound: cache_seconds + 1 s).

Each round creates a key on the deciding sidecar, lets nginx cache an allow for it,
revokes it, and polls through nginx until the key is refused. nginx keeps a cached
entry's validity in whole seconds, so how long an allow lives (1 to 2 s for a 1 s cache)
depends on where in a second it was stored: each round starts at a random point in the
second, or the rounds, paced by the poll, would all land on the same phase."""

from __future__ import annotations

import contextlib
import http.client
import random
import time
from urllib.parse import urlsplit

import httpx

from bench.context import Run
from bench.load import Scenario
from bench.services import PATH, Sidecar

POLL_SECONDS = 0.02  # a polling interval, not synchronisation
GIVE_UP_SECONDS = 6.0


def cached_revocation(run: Run, scenario: Scenario, decider: Sidecar, count: int) -> None:
    front = urlsplit(scenario.url)
    assert front.hostname and front.port
    poll = http.client.HTTPConnection(front.hostname, front.port, timeout=5)
    api = httpx.Client(
        base_url=decider.url, headers={"Authorization": f"Bearer {run.services.jwt}"}, timeout=10
    )

    def status(key: str) -> int:
        poll.request("GET", PATH, headers={"X-API-Key": key})
        response = poll.getresponse()
        response.read()
        return response.status

    served: list[float] = []  # when the last request still let through was sent
    refused: list[float] = []
    with api, contextlib.closing(poll):
        for _ in range(count):
            time.sleep(random.random())  # the phase within the second, not a wait
            created = api.post("/api/v1/api-keys/", json={"description": "cached revoke"})
            key, key_id = created.json()["api_key"], created.json()["id"]
            if status(key) != 200 or status(key) != 200:  # decided, then served from cache
                raise RuntimeError("cached revocation: a new key was not let through")
            if api.delete(f"/api/v1/api-keys/{key_id}").status_code != 200:
                raise RuntimeError("cached revocation: revoking failed")
            revoked_at = time.monotonic()
            last_served = 0.0
            while (sent := time.monotonic()) < revoked_at + GIVE_UP_SECONDS:
                if status(key) == 401:
                    refused.append(time.monotonic() - revoked_at)
                    break
                last_served = sent - revoked_at
                time.sleep(POLL_SECONDS)
            else:
                refused.append(float("inf"))
            served.append(last_served)
    run.results.cached_revocation = {
        "count": count,
        "cache_seconds": decider.config["forward_auth"]["cache_seconds"],
        "served_max_s": max(served),
        "refused_median_s": sorted(refused)[len(refused) // 2],
        "refused_max_s": max(refused),
    }
    run.log(
        f"cached revocation: {count} keys, refused within {max(refused):.2f} s "
        f"(last let through {max(served):.2f} s after the revocation)"
    )
