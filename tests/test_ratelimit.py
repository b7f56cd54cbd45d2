"""Rate limiting end to end: real redis-server, real sidecar processes, real upstream."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from sidecar.config.model import RateLimitsConfig
from sidecar.core.errors import RateLimited
from sidecar.ratelimit.limiter import RateLimiter, Sent, limiter_for
from sidecar.ratelimit.rules import RuleTable
from sidecar.redisconn import autopipeline
from tests.conftest import Api, make_token
from tests.harness import RedisProcess, SidecarProcess, wait_until
from tests.upstream_app import RecordingUpstream

DEFAULT = 5  # per 60 s
ANALYSIS = 20  # POST /api/v1/analysis/, per 60 s
FAST = 2  # /api/v1/fast, per 1 s
LIMITS = {
    "enabled": True,
    "default": {"requests": DEFAULT, "per_seconds": 60},
    "rules": [
        {"method": "POST", "path": "/api/v1/analysis/", "requests": ANALYSIS, "per_seconds": 60},
        {"path": "/api/v1/fast", "requests": FAST, "per_seconds": 1},
    ],
}


@pytest.fixture(scope="module")
def pair(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Api]]:
    """Two rate-limited sidecars sharing the test Redis."""
    workdir = tmp_path_factory.mktemp("ratelimit")
    processes = [SidecarProcess(config_for(rate_limits=LIMITS), workdir) for _ in range(2)]
    clients: list[Api] = []
    try:
        for process in processes:
            process.start()
            clients.append(Api(process.url))
        yield clients
    finally:
        for client in clients:
            client.http.close()
        for process in processes:
            process.stop()


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


def rate(response: httpx.Response) -> tuple[int, int, int]:
    h = response.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


def reached(recorder: RecordingUpstream, user: str) -> int:
    return sum(1 for r in recorder.received if r.header("x-callcov-user-id") == user)


async def _burst(urls: list[str], user: str, count: int) -> list[int]:
    headers = bearer(user)
    limits = httpx.Limits(max_connections=count)
    clients = [httpx.AsyncClient(base_url=u, timeout=30, limits=limits) for u in urls]
    try:
        calls = [
            clients[i % len(clients)].post("/api/v1/analysis/", content=b"{}", headers=headers)
            for i in range(count)
        ]
        return [r.status_code for r in await asyncio.gather(*calls)]
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def test_limit_is_exact_under_concurrency_across_two_instances(
    pair: list[Api], user: str, recorder: RecordingUpstream
) -> None:
    statuses = asyncio.run(_burst([a.base for a in pair], user, 4 * ANALYSIS))
    assert statuses.count(200) == ANALYSIS
    assert statuses.count(429) == 3 * ANALYSIS
    assert reached(recorder, user) == ANALYSIS


def test_headers_count_down_and_the_429(
    pair: list[Api], user: str, recorder: RecordingUpstream
) -> None:
    interval = 60 // DEFAULT
    for spent in range(1, DEFAULT + 1):
        response = pair[spent % 2].http.get("/api/v1/things", headers=bearer(user))
        assert response.status_code == 200
        limit, remaining, reset = rate(response)
        assert (limit, remaining) == (DEFAULT, DEFAULT - spent)
        assert interval * spent - 1 <= reset <= interval * spent  # until the budget is full

    for _ in range(3):  # refusals do not consume budget: Reset and Retry-After stay put
        refused = pair[0].http.get("/api/v1/things", headers=bearer(user))
        assert refused.status_code == 429
        assert refused.json() == {"detail": "Rate limit exceeded"}
        assert 1 <= int(refused.headers["retry-after"]) <= interval
        limit, remaining, reset = rate(refused)
        assert (limit, remaining) == (DEFAULT, 0)
        assert 60 - 2 <= reset <= 60
    assert reached(recorder, user) == DEFAULT


def test_users_have_separate_budgets(pair: list[Api], user: str) -> None:
    other = user + "-other"
    for _ in range(DEFAULT):
        assert pair[0].http.get("/api/v1/things", headers=bearer(user)).status_code == 200
    assert pair[1].http.get("/api/v1/things", headers=bearer(user)).status_code == 429
    response = pair[1].http.get("/api/v1/things", headers=bearer(other))
    assert response.status_code == 200
    assert rate(response)[1] == DEFAULT - 1


def test_api_keys_and_jwts_of_a_user_share_one_budget(pair: list[Api], user: str) -> None:
    keys = [pair[0].create_key(user)["api_key"] for _ in range(2)]
    credentials = [
        {"X-API-Key": keys[0]},
        {"Authorization": f"Bearer {keys[1]}"},
        bearer(user),
    ]
    remaining = []
    for spent in range(DEFAULT):
        response = pair[spent % 2].http.get("/api/v1/things", headers=credentials[spent % 3])
        assert response.status_code == 200
        remaining.append(rate(response)[1])
    assert remaining == list(range(DEFAULT - 1, -1, -1))
    for headers in credentials:
        assert pair[1].http.get("/api/v1/things", headers=headers).status_code == 429


def test_rules_have_their_own_limits_and_budgets(pair: list[Api], user: str) -> None:
    for _ in range(DEFAULT):
        assert pair[0].http.get("/api/v1/analysis/", headers=bearer(user)).status_code == 200
    assert pair[0].http.get("/api/v1/analysis/", headers=bearer(user)).status_code == 429
    # POST to the same path is the analysis rule, with its own budget
    response = pair[0].http.post("/api/v1/analysis/123", headers=bearer(user))
    assert response.status_code == 200
    assert rate(response)[:2] == (ANALYSIS, ANALYSIS - 1)
    response = pair[1].http.get("/API/v1/FAST/1", headers=bearer(user))
    assert rate(response)[:2] == (FAST, FAST - 1)


def test_public_paths_are_not_limited(pair: list[Api], user: str) -> None:
    for _ in range(DEFAULT + 1):
        response = pair[0].http.get("/api/v1/auth/login", headers=bearer(user))
        assert response.status_code == 200
        assert "x-ratelimit-limit" not in response.headers


def test_budget_recovers_and_the_counter_expires(
    pair: list[Api], user: str, redis_client: redis.Redis
) -> None:
    def get() -> httpx.Response:
        return pair[0].http.get("/api/v1/fast", headers=bearer(user))

    assert [get().status_code for _ in range(FAST)] == [200] * FAST
    refused = get()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    wait_until(lambda: get().status_code == 200, timeout=3)

    key = f"callcov:rl:{{{user}}}:*:/api/v1/fast"
    assert 0 < redis_client.pttl(key) <= 1000
    wait_until(lambda: not redis_client.exists(key), timeout=3)
    assert [rate(get())[1] for _ in range(FAST)] == list(range(FAST - 1, -1, -1))


@pytest.fixture
def lost_redis(
    config_for: Any, tmp_path: Path
) -> Iterator[tuple[RedisProcess, SidecarProcess, SidecarProcess]]:
    """A private Redis, a fail-open and a fail-closed sidecar on it."""
    server = RedisProcess(tmp_path)
    server.start()
    started: list[SidecarProcess] = []
    try:
        for fail_open in (True, False):
            config = config_for(
                redis={"url": server.url}, rate_limits=dict(LIMITS, fail_open=fail_open)
            )
            started.append(SidecarProcess(config, tmp_path).start())
        yield server, started[0], started[1]
    finally:
        for process in started:
            process.stop()
        server.stop()


def test_redis_down_fails_open_or_closed_as_configured(
    lost_redis: tuple[RedisProcess, SidecarProcess, SidecarProcess],
    user: str,
    recorder: RecordingUpstream,
) -> None:
    server, fail_open, fail_closed = lost_redis
    for spent, process in enumerate((fail_open, fail_closed), start=1):
        response = httpx.get(process.url + "/api/v1/things", headers=bearer(user))
        assert rate(response) == (DEFAULT, DEFAULT - spent, 60 // DEFAULT * spent)
    server.stop()

    for _ in range(5):
        response = httpx.get(fail_open.url + "/api/v1/things", headers=bearer(user))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == str(DEFAULT)
        assert "x-ratelimit-remaining" not in response.headers
        closed = httpx.get(fail_closed.url + "/api/v1/things", headers=bearer(user))
        assert closed.status_code == 503
        assert closed.headers["retry-after"] == "3"  # redis.retry_after_seconds
    assert reached(recorder, user) == 2 + 5

    for process in (fail_open, fail_closed):
        metrics = httpx.get(process.admin_url + "/metrics").text
        assert "sidecar_rate_limit_store_errors_total 5.0" in metrics
        assert process.logs().count("rate limiter cannot reach Redis") == 1

    server.start()  # back on the same port: limiting resumes
    wait_until(
        lambda: (
            httpx.get(fail_closed.url + "/api/v1/things", headers=bearer(user)).status_code == 200
        ),
        timeout=5,
    )


def test_disabled_limiter_never_touches_redis() -> None:
    unreachable = Redis(port=1)
    limiter = limiter_for(RateLimitsConfig(enabled=False), unreachable, retry_after=1)
    assert asyncio.run(limiter.admit("u", "POST", "/api/v1/analysis/")) == []


BURST = 3


async def _in_process_burst(
    redis_url: str, user_id: str, monkeypatch_streams: Callable[[], None] | None = None
) -> list[bool]:
    """BURST + 2 checks against one limiter; True where admitted."""
    client = Redis.from_url(redis_url)
    config = RateLimitsConfig(default={"requests": BURST, "per_seconds": 60})
    limiter = limiter_for(config, client, retry_after=1)
    if monkeypatch_streams is not None:
        monkeypatch_streams()  # redis-py "changes" after start-up
    admitted = []
    try:
        for _ in range(BURST + 2):
            try:
                await limiter.admit(user_id, "GET", "/api/v1/things")
                admitted.append(True)
            except RateLimited:
                admitted.append(False)
    finally:
        await limiter.close()
        await client.aclose()
    return admitted


@contextlib.asynccontextmanager
async def _burst_limiter(redis_url: str) -> AsyncIterator[RateLimiter]:
    """A limiter of BURST per 60 s on its own client, closed afterwards."""
    client = Redis.from_url(redis_url)
    config = RateLimitsConfig(default={"requests": BURST, "per_seconds": 60})
    limiter = limiter_for(config, client, retry_after=1)
    try:
        yield limiter
    finally:
        await limiter.close()
        await client.aclose()


def test_a_check_is_on_its_way_to_redis_before_it_is_awaited(
    redis_server: RedisProcess, user: str
) -> None:
    """The gateway prepares the upstream request while Redis answers the check, so the
    command must be sent when ``check`` returns, not when its result is awaited."""
    key = f"callcov:rl:{{{user}}}:default"
    watcher = redis.Redis.from_url(redis_server.url)

    async def scenario() -> None:
        async with _burst_limiter(redis_server.url) as limiter:
            await limiter.admit(user, "GET", "/api/v1/things")  # connects; charges one
            first = int(watcher.get(key) or 0)
            pending = limiter.check(user, "GET", "/api/v1/things")
            # The event loop does not run until ``pending`` is awaited: only a command
            # already written can move the bucket meanwhile.
            wait_until(lambda: int(watcher.get(key) or 0) > first, timeout=5)
            headers = dict(await pending)
            assert headers[b"x-ratelimit-remaining"] == str(BURST - 2).encode()

    try:
        asyncio.run(scenario())
    finally:
        watcher.close()


def test_a_check_sent_ahead_is_charged_once_and_only_for_its_own_user(
    redis_server: RedisProcess, user: str
) -> None:
    """``send`` (at the request head) charges at once; ``check`` then takes that charge
    instead of charging again. A check for another user drops it and charges its own."""
    other = user + "-other"
    keys = {u: f"callcov:rl:{{{u}}}:default" for u in (user, other)}
    watcher = redis.Redis.from_url(redis_server.url)

    async def scenario() -> None:
        async with _burst_limiter(redis_server.url) as limiter:
            await limiter.admit(user, "GET", "/api/v1/things")  # connects; charges one
            charged = int(watcher.get(keys[user]) or 0)
            sent = limiter.send(user, "GET", "/api/v1/things")
            assert sent is not None
            wait_until(lambda: int(watcher.get(keys[user]) or 0) > charged, timeout=5)
            headers = dict(await limiter.check(user, "GET", "/api/v1/things", sent))
            assert headers[b"x-ratelimit-remaining"] == str(BURST - 2).encode()

            sent = limiter.send(user, "GET", "/api/v1/things")
            headers = dict(await limiter.check(other, "GET", "/api/v1/things", sent))
            assert headers[b"x-ratelimit-remaining"] == str(BURST - 1).encode()
            assert watcher.exists(keys[other])
            with pytest.raises(RateLimited):  # the dropped check took the last of the burst
                await limiter.admit(user, "GET", "/api/v1/things")

    try:
        asyncio.run(scenario())
    finally:
        watcher.close()


def test_a_dropped_check_that_fails_is_not_reported_as_lost() -> None:
    """A request refused before its check was taken drops it: if Redis then fails the
    check, asyncio must not log an exception nobody retrieved."""
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        reply: asyncio.Future[Any] = loop.create_future()
        rule = RuleTable(RateLimitsConfig(default={"requests": 1, "per_seconds": 1})).default
        Sent("u", rule, reply).drop()
        reply.set_exception(redis.ConnectionError("gone"))
        await asyncio.sleep(0)  # its done callbacks run
        del reply
        gc.collect()

    asyncio.run(scenario())
    assert reported == []


def test_missing_redis_py_internals_are_found_at_start_and_the_script_call_used(
    redis_server: RedisProcess, user: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # As if redis-py renamed the private stream attributes the auto-pipeliner reads.
    monkeypatch.setattr(autopipeline, "STREAM_ATTRIBUTES", ("_in_stream", "_out_stream"))
    client = Redis.from_url(redis_server.url)
    assert "_in_stream, _out_stream" in (autopipeline.unsupported(client) or "")
    with caplog.at_level(logging.WARNING, logger="sidecar.ratelimit"):
        admitted = asyncio.run(_in_process_burst(redis_server.url, user))
    assert admitted == [True] * BURST + [False, False]  # limits exactly, never fails open
    warnings = [r.getMessage() for r in caplog.records if r.name == "sidecar.ratelimit"]
    assert len(warnings) == 1
    assert "connections have no _in_stream, _out_stream" in warnings[0]  # found at start
    assert "using redis-py's script call instead" in warnings[0]


def test_internals_lost_after_start_switch_to_the_script_call_once(
    redis_server: RedisProcess, user: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def rename() -> None:
        monkeypatch.setattr(autopipeline, "STREAM_ATTRIBUTES", ("_in_stream", "_out_stream"))

    with caplog.at_level(logging.WARNING, logger="sidecar.ratelimit"):
        admitted = asyncio.run(_in_process_burst(redis_server.url, user, rename))
    assert admitted == [True] * BURST + [False, False]
    warnings = [r.getMessage() for r in caplog.records if r.name == "sidecar.ratelimit"]
    assert len(warnings) == 1
    assert "a connected redis-py connection has no stream pair" in warnings[0]  # at run time
    assert "using redis-py's script call instead" in warnings[0]


class _NoStreams(Connection):
    """A redis-py connection class as a future release might have it: other names."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        del self._reader, self._writer


def test_a_connection_class_without_the_stream_attributes_is_detected() -> None:
    client = Redis(connection_pool=ConnectionPool(connection_class=_NoStreams, port=1))
    reason = autopipeline.unsupported(client)  # builds a connection object, no I/O
    assert reason is not None and "have no _reader, _writer" in reason


def test_this_redis_py_is_driven_by_the_auto_pipeliner(redis_server: RedisProcess) -> None:
    assert autopipeline.unsupported(Redis.from_url(redis_server.url)) is None
