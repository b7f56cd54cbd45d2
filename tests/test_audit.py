"""The audit trail (SPEC Part 3, "Audit trail"), against real processes on a Redis of
this module's own: every change's exact event, reading events (owner, admin feed,
export), a failed change leaving no event, and no secret in any event or log line."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from sidecar.keys.audit_schema import AUDIT_STREAM, key_events_key
from sidecar.keys.schema import all_keys_key
from tests.conftest import Api, make_token
from tests.harness import (
    SECRETS,
    RedisProcess,
    SidecarProcess,
    base_config,
    free_port,
    merge,
    remember_secret,
    wait_until,
)
from tests.test_cli import cli, ok
from tests.test_secret_scanning import REPORT_URL, Signer, report

KEYS = "/api/v1/api-keys/"
SCAN = "/api/v1/secret-scanning/"
EVENT_ID = re.compile(r"\d+-\d+")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
HEX64 = re.compile(r"[0-9a-f]{64}")
AGENT = "audit-test/1.0"


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def audited(
    quiet_redis: RedisProcess,
    upstream: Any,
    tmp_path_factory: pytest.TempPathFactory,
    signer: Signer,
) -> Iterator[SidecarProcess]:
    """A sidecar with secret scanning on, alone on its Redis: the chain is its own."""
    directory = tmp_path_factory.mktemp("audit")
    keys_file = directory / "github-keys.json"
    keys_file.write_bytes(orjson.dumps({"public_keys": [signer.entry()]}))
    config = merge(
        base_config(redis_url=quiet_redis.url, upstream_url=upstream[1].url),
        {"secret_scanning": {"enabled": True, "public_keys_file": str(keys_file)}},
    )
    process = SidecarProcess(config, directory).start()
    yield process
    process.stop()


@pytest.fixture
def api(audited: SidecarProcess) -> Iterator[Api]:
    client = Api(audited.url)
    yield client
    client.http.close()


def headers(user: str, request_id: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {make_token(user)}", "User-Agent": AGENT}
    if request_id is not None:
        out["X-Request-ID"] = request_id
    return out


def key_events(api: Api, user: str, key_id: str, **query: Any) -> list[dict[str, Any]]:
    response = api.http.get(f"{KEYS}{key_id}/events", params=query, headers=headers(user))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def sealed(event: dict[str, Any]) -> dict[str, Any]:
    """An event without what differs every run (id, time, chain links), checked apart."""
    assert EVENT_ID.fullmatch(event["id"]), event
    assert ISO.fullmatch(event["time"]), event
    assert HEX64.fullmatch(event["hash"]), event
    assert event["prev"] == "" or HEX64.fullmatch(event["prev"]), event
    return {k: v for k, v in event.items() if k not in ("id", "time", "hash", "prev")}


def test_api_changes_record_exact_events_newest_first(
    api: Api, audited: SidecarProcess, user: str
) -> None:
    response = api.http.post(
        KEYS, json={"description": "ci"}, headers=headers(user, "req-create-1")
    )
    assert response.status_code == 201
    created = response.json()
    remember_secret(created["api_key"])
    rotated = api.http.post(
        f"{KEYS}{created['id']}/rotate",
        json={"grace_period_seconds": 0},
        headers=headers(user, "req-rotate-1"),
    ).json()
    remember_secret(rotated["api_key"])
    deleted = api.http.delete(f"{KEYS}{rotated['id']}", headers=headers(user, "req-delete-1"))
    assert deleted.status_code == 200

    actor = {"type": "user", "id": user}
    common = {"actor": actor, "user_id": user, "client_ip": "127.0.0.1", "user_agent": AGENT}
    old = key_events(api, user, created["id"])
    assert [sealed(e) for e in old] == [
        {
            **common,
            "action": "key.rotated",
            "key_id": created["id"],
            "key_prefix": created["key_prefix"],
            "request_id": "req-rotate-1",
            "rotated_to": rotated["id"],
        },
        {
            **common,
            "action": "key.created",
            "key_id": created["id"],
            "key_prefix": created["key_prefix"],
            "request_id": "req-create-1",
        },
    ]
    new = key_events(api, user, rotated["id"])
    assert [sealed(e) for e in new] == [
        {
            **common,
            "action": "key.revoked",
            "key_id": rotated["id"],
            "key_prefix": rotated["key_prefix"],
            "request_id": "req-delete-1",
        },
        {
            **common,
            "action": "key.created",
            "key_id": rotated["id"],
            "key_prefix": rotated["key_prefix"],
            "request_id": "req-rotate-1",
            "rotated_from": created["id"],
        },
    ]
    assert old[1]["time"] == created["created_at"]
    # One chain: each event links to the one written before it.
    assert new[1]["prev"] == old[0]["hash"]
    assert new[0]["prev"] == new[1]["hash"]
    # The same events in the log, as JSON lines with "log": "audit".
    logged = {
        line["id"]: line
        for line in map(orjson.loads, audited.logs().splitlines())
        if isinstance(line, dict) and line.get("log") == "audit"
    }
    for event in old + new:
        assert logged[event["id"]] == {"log": "audit", **event}


def test_cli_changes_are_the_operators_without_a_request(
    audited: SidecarProcess, api: Api, user: str
) -> None:
    config = str(audited.config_path)
    created = ok("--config", config, "keys", "create", "--user", user)
    remember_secret(created["api_key"])
    revoked = cli("--config", config, "keys", "revoke", created["id"])
    assert revoked.returncode == 0, revoked.stderr
    [line] = [orjson.loads(x) for x in revoked.stderr.splitlines() if '"log":"audit"' in x]
    assert (line["action"], line["key_id"], line["actor"]) == (
        "key.revoked",
        created["id"],
        {"type": "operator", "id": None},
    )
    canary = ok("--config", config, "keys", "create", "--user", user, "--canary")
    remember_secret(canary["api_key"])
    operator = {
        "actor": {"type": "operator", "id": None},
        "user_id": user,
        "client_ip": None,
        "user_agent": None,
        "request_id": None,
    }
    assert [sealed(e) for e in key_events(api, user, created["id"])] == [
        {**operator, "action": "key.revoked", "key_id": created["id"],
         "key_prefix": created["key_prefix"]},
        {**operator, "action": "key.created", "key_id": created["id"],
         "key_prefix": created["key_prefix"]},
    ]  # fmt: skip
    exported = cli("--config", config, "audit", "export", "--user", user)
    assert exported.returncode == 0, exported.stderr
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert [(e["action"], e["key_id"]) for e in lines] == [
        ("key.created", created["id"]),
        ("key.revoked", created["id"]),
        ("canary.created", canary["id"]),
    ]
    later = cli(
        "--config", config, "audit", "export", "--user", user, "--since", "2999-01-01T00:00Z"
    )
    assert (later.returncode, later.stdout) == (0, "")
    bad = cli("--config", config, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 2
    assert sealed(lines[2]) == {
        **operator, "action": "canary.created", "key_id": canary["id"],
        "key_prefix": canary["key_prefix"],
    }  # fmt: skip


def test_a_leaked_key_is_recorded_with_the_reports_url(
    audited: SidecarProcess, api: Api, signer: Signer, user: str
) -> None:
    created = api.create_key(user)
    body = report(created["api_key"])
    answer = httpx.post(
        audited.url + SCAN,
        content=body,
        headers={**signer.headers(body), "User-Agent": "GitHub-Hookshot/1", "X-Request-ID": "gh-1"},
    )
    assert answer.status_code == 200
    [leaked, _] = key_events(api, user, created["id"])
    assert sealed(leaked) == {
        "action": "key.leaked",
        "actor": {"type": "secret_scanning", "id": None},
        "user_id": user,
        "key_id": created["id"],
        "key_prefix": created["key_prefix"],
        "client_ip": "127.0.0.1",
        "user_agent": "GitHub-Hookshot/1",
        "request_id": "gh-1",
        "url": REPORT_URL,
    }


def test_a_canary_use_is_recorded_and_answered_as_an_unknown_key(
    audited: SidecarProcess, api: Api, user: str
) -> None:
    canary = ok("--config", str(audited.config_path), "keys", "create", "--user", user, "--canary")
    remember_secret(canary["api_key"])
    used = httpx.get(
        audited.url + "/api/v1/analysis/",
        headers={"X-API-Key": canary["api_key"], "User-Agent": "curl/8", "X-Request-ID": "c-1"},
    )
    unknown = httpx.get(
        audited.url + "/api/v1/analysis/", headers={"X-API-Key": canary["api_key"][:-4] + "AAAA"}
    )
    assert (used.status_code, used.content) == (401, unknown.content)
    assert used.headers["www-authenticate"] == unknown.headers["www-authenticate"]

    def recorded() -> list[dict[str, Any]]:
        events = key_events(api, user, canary["id"])
        return [e for e in events if e["action"] == "canary.used"]

    wait_until(lambda: bool(recorded()), timeout=10)
    assert sealed(recorded()[0]) == {
        "action": "canary.used",
        "actor": {"type": "client", "id": None},
        "user_id": user,
        "key_id": canary["id"],
        "key_prefix": canary["key_prefix"],
        "client_ip": "127.0.0.1",
        "user_agent": "curl/8",
        "request_id": "c-1",
    }


def test_a_keys_events_page_by_before_and_bad_queries_are_422(api: Api, user: str) -> None:
    created = api.create_key(user)
    rotated = api.http.post(
        f"{KEYS}{created['id']}/rotate", json={"grace_period_seconds": 60}, headers=headers(user)
    )
    assert rotated.status_code == 201
    remember_secret(rotated.json()["api_key"])
    everything = key_events(api, user, created["id"])
    assert [e["action"] for e in everything] == ["key.rotated", "key.created"]
    first = key_events(api, user, created["id"], limit=1)
    assert first == everything[:1]
    assert key_events(api, user, created["id"], limit=1, before=first[0]["id"]) == everything[1:2]
    url = f"{KEYS}{created['id']}/events"
    for query, where in [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"before": "yesterday"}, "before"),
    ]:
        bad = api.http.get(url, params=query, headers=headers(user))
        assert bad.status_code == 422, query
        assert bad.json()["detail"][0]["loc"] == ["query", where]
    assert api.http.get(url, headers=headers("someone-else")).status_code == 404
    assert api.http.get(f"{KEYS}not-a-uuid/events", headers=headers(user)).status_code == 422
    with_key = api.http.get(url, headers={"X-API-Key": created["api_key"]})
    assert with_key.status_code == 401


def test_the_admin_feed_returns_every_event_once_while_10_writers_create_keys(
    audited: SidecarProcess, tmp_path: Any
) -> None:
    """The writers go through two instances: their chain heads race for real."""
    ports = {"server": {"port": free_port()}, "admin": {"port": free_port()}}
    other = SidecarProcess(merge(audited.config, ports), tmp_path).start()
    try:
        _feed_under_writers(audited, other)
    finally:
        other.stop()
    verified = cli("--config", str(audited.config_path), "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _feed_under_writers(audited: SidecarProcess, other: SidecarProcess) -> None:
    feed = audited.admin_url + "/audit/events"
    start = httpx.get(feed, params={"limit": 1000}).json()
    after = start["events"][-1]["id"] if start["events"] else None
    users = [f"feed-{uuid.uuid4().hex[:8]}-{i}" for i in range(10)]
    created: list[str] = []
    lock = threading.Lock()

    def writer(user: str, base: str) -> None:
        with httpx.Client(base_url=base) as http:
            for _ in range(5):
                answer = http.post(KEYS, json={}, headers=headers(user))
                assert answer.status_code == 201
                remember_secret(answer.json()["api_key"])
                with lock:
                    created.append(answer.json()["id"])

    threads = [
        threading.Thread(target=writer, args=(u, (audited, other)[i % 2].url))
        for i, u in enumerate(users)
    ]
    for thread in threads:
        thread.start()
    seen: list[str] = []
    cursor = after

    def page() -> None:
        nonlocal cursor
        params: dict[str, Any] = {"limit": 7}
        if cursor is not None:
            params["after"] = cursor
        body = httpx.get(feed, params=params).json()
        for event in body["events"]:
            seen.append(event["key_id"])
        if body["next"] is not None:
            cursor = body["next"]

    while any(t.is_alive() for t in threads):
        page()
    for thread in threads:
        thread.join()
    before = None
    while before != len(seen):  # drain: until a page adds nothing
        before = len(seen)
        page()
    assert sorted(seen) == sorted(created)  # each exactly once
    assert len(seen) == 50
    for bad, where in [({"after": "x"}, "after"), ({"limit": 0}, "limit")]:
        answer = httpx.get(feed, params=bad)
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["loc"] == ["query", where]


def test_a_change_answered_503_left_neither_the_change_nor_an_event(
    audited: SidecarProcess, api: Api, quiet_redis: RedisProcess, user: str
) -> None:
    raw = quiet_redis.client()
    created = api.create_key(user)
    copies = key_events_key(created["id"])
    events_before = raw.zcard(copies)
    chain_before = raw.xlen(AUDIT_STREAM)
    raw.rename(copies, copies + ":saved")
    raw.set(copies, "not a stream")  # the event's stream cannot take it
    try:
        answer = api.http.delete(f"{KEYS}{created['id']}", headers=headers(user))
        assert answer.status_code == 503
        assert raw.xlen(AUDIT_STREAM) == chain_before
    finally:
        raw.delete(copies)
        raw.rename(copies + ":saved", copies)
    assert raw.zcard(copies) == events_before
    used = httpx.get(audited.url + "/api/v1/analysis/", headers={"X-API-Key": created["api_key"]})
    assert used.status_code == 200  # still active: the revocation did not happen

    # A create whose chain stream holds something else: no key, no event.
    other = f"{user}-2"
    raw.rename(AUDIT_STREAM, AUDIT_STREAM + ":saved")
    raw.set(AUDIT_STREAM, "not a stream")
    try:
        answer = api.http.post(KEYS, json={}, headers=headers(other))
        assert answer.status_code == 503
        assert raw.zcard(all_keys_key(other)) == 0
    finally:
        raw.delete(AUDIT_STREAM)
        raw.rename(AUDIT_STREAM + ":saved", AUDIT_STREAM)
    assert raw.xlen(AUDIT_STREAM) == chain_before
    verified = cli("--config", str(audited.config_path), "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_no_event_holds_a_key_or_a_jwt(
    audited: SidecarProcess, api: Api, quiet_redis: RedisProcess, user: str
) -> None:
    token = make_token(user)
    created = api.create_key(user)
    # A client may put anything in its user agent, a key or a JWT too: masked.
    sneaky = {"Authorization": f"Bearer {token}", "User-Agent": f"x {created['api_key']} {token}"}
    assert api.http.delete(f"{KEYS}{created['id']}", headers=sneaky).status_code == 200
    raw = quiet_redis.client()
    stored = b"".join(fields[b"event"] for _, fields in raw.xrange(AUDIT_STREAM)).decode()
    assert stored
    assert not [s for s in SECRETS | {token} if s and s in stored]
    assert not re.search(r"sk_(live|test)_[A-Za-z0-9]{48}|eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+", stored)


def test_verify_passes_on_the_modules_chain(audited: SidecarProcess) -> None:
    result = cli("--config", str(audited.config_path), "audit", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("audit chain intact: ")


def test_an_update_records_each_changed_field_from_and_to(api: Api, user: str) -> None:
    created = api.create_key(user, description="before")
    url = f"{KEYS}{created['id']}"
    answer = api.http.patch(
        url, json={"description": "after"}, headers=headers(user, "req-patch-1")
    )
    assert answer.status_code == 200, answer.text
    same = api.http.patch(url, json={"description": "after"}, headers=headers(user))
    assert same.status_code == 200  # nothing changed: no event
    [updated, _] = key_events(api, user, created["id"])
    assert sealed(updated) == {
        "action": "key.updated",
        "actor": {"type": "user", "id": user},
        "user_id": user,
        "key_id": created["id"],
        "key_prefix": created["key_prefix"],
        "client_ip": "127.0.0.1",
        "user_agent": AGENT,
        "request_id": "req-patch-1",
        "changes": {"description": {"from": "before", "to": "after"}},
    }
