"""The rate-limit check starts at the request head (app.py ``on_head``, the public
server's head hook): it is in Redis before the app runs, and each request is charged
once. In process, with the production wiring (``uvicorn_config(hardened=True, ...)``),
a real redis-server and a real upstream."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from sidecar.app.dispatch import Sidecar
from sidecar.config.loading import parse
from sidecar.keys.hashing import KeyHasher
from sidecar.server.serving import Server, bind, uvicorn_config
from tests.conftest import Api
from tests.harness import HASH_SECRET, RedisProcess, wait_until

BUDGET = 50


class _Watched:
    """The sidecar's own head hook, noting for each request whether the user's bucket
    in Redis moved while the hook ran (only an already-written check can move it: the
    event loop is blocked until the hook returns)."""

    def __init__(self, sidecar: Sidecar, watcher: redis.Redis) -> None:
        self.sidecar = sidecar
        self._hook = sidecar.on_head
        self._watcher = watcher
        self.bucket: str | None = None
        self.moved: list[bool] = []
        self.after: Callable[[], None] | None = None  # runs once the hook is done

    def __call__(self, scope: Any) -> None:
        bucket = self.bucket
        if bucket is None or not scope["path"].startswith("/api/v1/calls"):
            self._hook(scope)
            return
        before = self._watcher.get(bucket)
        self._hook(scope)
        try:
            wait_until(lambda: self._watcher.get(bucket) != before, timeout=2)
        except AssertionError:
            self.moved.append(False)
        else:
            self.moved.append(True)
        if self.after is not None:
            self.after()


@pytest.fixture
def served(config_for: Any, redis_server: RedisProcess) -> Iterator[tuple[Api, _Watched]]:
    limits = {"enabled": True, "default": {"requests": BUDGET, "per_seconds": 60}}
    config = parse(config_for(rate_limits=limits), env={})
    sidecar = Sidecar(config, redis_server.url)
    watcher = redis_server.client()
    watched = _Watched(sidecar, watcher)
    server = Server(uvicorn_config(sidecar, config, lifespan="on", hardened=True, on_head=watched))
    sock = bind("127.0.0.1", 0)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        api = Api(f"http://127.0.0.1:{sock.getsockname()[1]}")
        yield api, watched
        api.http.close()
    finally:
        server.should_exit = True
        thread.join(10)
        watcher.close()


def _remaining(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.headers["x-ratelimit-remaining"])


def test_the_check_is_in_redis_before_the_app_runs_and_charged_once(
    served: tuple[Api, _Watched], user: str
) -> None:
    api, watched = served
    key = {"X-API-Key": api.create_key(user)["api_key"]}
    first = _remaining(api.http.get("/api/v1/calls/1", headers=key))  # caches the key
    watched.bucket = f"callcov:rl:{{{user}}}:default"
    later = [_remaining(api.http.get(f"/api/v1/calls/{n}", headers=key)) for n in (2, 3, 4)]
    assert watched.moved == [True, True, True]
    assert [first, *later] == [BUDGET - 1, BUDGET - 2, BUDGET - 3, BUDGET - 4]


def test_a_key_revoked_after_its_early_check_is_refused(
    served: tuple[Api, _Watched], user: str
) -> None:
    """The revocation reaches the cache between the head and the decision: the request
    is refused all the same (its early check stays charged, as for a request admitted
    and then failed)."""
    api, watched = served
    api_key = api.create_key(user)["api_key"]
    key = {"X-API-Key": api_key}
    assert _remaining(api.http.get("/api/v1/calls/1", headers=key)) == BUDGET - 1
    key_hash = KeyHasher(HASH_SECRET.encode()).hash(api_key)
    cache = watched.sidecar.cache

    def revoke() -> None:
        cached = cache.fresh(key_hash)
        assert cached is not None
        cache.put(key_hash, dataclasses.replace(cached, active=False), cache.epoch)

    watched.bucket = f"callcov:rl:{{{user}}}:default"
    watched.after = revoke
    refused = api.http.get("/api/v1/calls/2", headers=key)
    assert watched.moved == [True]
    assert refused.status_code == 401
    assert refused.json()["detail"]
