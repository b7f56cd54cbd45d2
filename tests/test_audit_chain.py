"""The audit chain's tamper evidence and retention: events written by the store with
the configured key, tampered with by raw Redis commands, checked by the real
``callcov-sidecar audit verify``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from sidecar.config.loading import parse
from sidecar.keys.audit_events import configured_key
from sidecar.keys.audit_reader import AuditReader
from sidecar.keys.audit_schema import AUDIT_ANCHOR, AUDIT_HEAD, AUDIT_STREAM
from sidecar.keys.audit_trail import AuditTrail
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.store import KeyStore
from tests.harness import HASH_SECRET, RedisProcess, base_config
from tests.test_cli import cli


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[RedisProcess]:
    (tmp_path / "redis").mkdir()
    with RedisProcess(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def config_path(fresh: RedisProcess, tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.yaml"
    config = base_config(redis_url=fresh.url, upstream_url="http://127.0.0.1:9")
    path.write_text(yaml.safe_dump(config))
    return path


def write_events(url: str, path: Path, count: int, retention_ms: int | None = None) -> list[str]:
    """``count`` keys created (one key.created each) by a store sealing as configured."""
    config = parse(yaml.safe_load(path.read_text()), {})

    async def run() -> list[str]:
        client = aioredis.Redis.from_url(url)
        trail = AuditTrail(configured_key(config), config.audit.retention_days)
        if retention_ms is not None:
            trail.retention_ms = retention_ms
        store = KeyStore(client, KeyHasher(HASH_SECRET.encode()), 100, retry_after=1, audit=trail)
        try:
            return [(await store.create("tamper-user", f"k{i}")).id for i in range(count)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def entries(raw: redis.Redis) -> list[tuple[str, dict[str, Any]]]:
    return [(i.decode(), orjson.loads(f[b"event"])) for i, f in raw.xrange(AUDIT_STREAM)]


def verify(path: Path) -> tuple[int, str]:
    result = cli("--config", str(path), "audit", "verify")
    return result.returncode, result.stdout + result.stderr


def next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def rebuild(raw: redis.Redis, kept: list[tuple[str, dict[str, Any]]]) -> None:
    """The chain stream written again entry by entry, as an attacker with Redis would."""
    raw.delete(AUDIT_STREAM)
    for entry_id, event in kept:
        raw.xadd(AUDIT_STREAM, {"event": orjson.dumps(event)}, id=entry_id)


def test_an_empty_store_verifies_and_says_so(config_path: Path) -> None:
    assert verify(config_path) == (
        0,
        "audit chain intact: no events recorded yet, nothing to verify\n",
    )


def test_an_intact_chain_verifies(fresh: RedisProcess, config_path: Path) -> None:
    write_events(fresh.url, config_path, 5)
    code, output = verify(config_path)
    assert code == 0, output
    assert output.startswith("audit chain intact: 5 event(s), from ")


def test_deleting_an_event_in_the_middle_is_named(fresh: RedisProcess, config_path: Path) -> None:
    write_events(fresh.url, config_path, 5)
    raw = fresh.client()
    chain = entries(raw)
    removed, after = chain[2][0], chain[3][0]
    assert raw.xdel(AUDIT_STREAM, removed) == 1
    code, output = verify(config_path)
    assert code == 1
    assert f"event {removed} was removed from the chain" in output
    assert after in output


def test_an_inserted_forged_event_is_named(fresh: RedisProcess, config_path: Path) -> None:
    write_events(fresh.url, config_path, 4)
    raw = fresh.client()
    chain = entries(raw)
    # Right after the first event followed by a free id (after the last one, if none is).
    spot = next(
        (n for n in range(1, len(chain)) if next_id(chain[n - 1][0]) != chain[n][0]), len(chain)
    )
    forged_id = next_id(chain[spot - 1][0])
    forged = {**chain[spot - 1][1], "action": "key.revoked", "prev": chain[spot - 1][1]["hash"]}
    forged["hash"] = "0" * 64
    rebuild(raw, [*chain[:spot], (forged_id, forged), *chain[spot:]])
    code, output = verify(config_path)
    assert code == 1
    assert f"event {forged_id}: its hash does not match its content" in output


def test_an_inserted_copy_of_a_real_event_breaks_the_link(
    fresh: RedisProcess, config_path: Path
) -> None:
    write_events(fresh.url, config_path, 3)
    raw = fresh.client()
    chain = entries(raw)
    replayed_id = f"{int(chain[-1][0].partition('-')[0]) + 1}-0"
    raw.xadd(AUDIT_STREAM, {"event": orjson.dumps(chain[0][1])}, id=replayed_id)
    code, output = verify(config_path)
    assert code == 1
    assert f"event {replayed_id}: its prev does not link" in output


def test_a_changed_field_is_named(fresh: RedisProcess, config_path: Path) -> None:
    write_events(fresh.url, config_path, 4)
    raw = fresh.client()
    chain = entries(raw)
    edited_id, event = chain[1]
    rebuild(raw, [chain[0], (edited_id, {**event, "user_id": "someone-else"}), *chain[2:]])
    code, output = verify(config_path)
    assert code == 1
    assert f"event {edited_id}: its hash does not match its content" in output


def test_removing_the_newest_events_is_caught_by_the_head(
    fresh: RedisProcess, config_path: Path
) -> None:
    write_events(fresh.url, config_path, 3)
    raw = fresh.client()
    chain = entries(raw)
    raw.xdel(AUDIT_STREAM, chain[-1][0])
    code, output = verify(config_path)
    assert code == 1
    assert f"the chain ends after event {chain[-2][0]}" in output


def test_retention_trims_oldest_first_and_the_chain_still_verifies(
    fresh: RedisProcess, config_path: Path
) -> None:
    write_events(fresh.url, config_path, 3)
    raw = fresh.client()
    old = entries(raw)
    # Written with a retention of 0 ms: everything before this write is past it.
    write_events(fresh.url, config_path, 1, retention_ms=0)
    now = entries(raw)
    assert len(now) == 1
    assert orjson.loads(raw.get(AUDIT_ANCHOR)) == old[-1][1]
    assert now[0][1]["prev"] == old[-1][1]["hash"]
    assert raw.get(AUDIT_HEAD).decode() == now[0][1]["hash"]
    # Against the retention it was trimmed with, the chain holds from its anchor on.
    config = parse(yaml.safe_load(config_path.read_text()), {})

    async def verdict(days: float) -> Any:
        client = aioredis.Redis.from_url(fresh.url)
        try:
            return await AuditReader(client, configured_key(config), days).verify()
        finally:
            await client.aclose()

    intact = asyncio.run(verdict(0))
    assert (intact.events, intact.problem) == (1, None)
    # An anchor younger than the configured 400 days: events were removed from the start.
    code, output = verify(config_path)
    assert code == 1
    assert "events were removed from the start of the chain" in output


def test_an_entry_that_is_no_event_is_named_and_still_exported(
    fresh: RedisProcess, config_path: Path
) -> None:
    write_events(fresh.url, config_path, 2)
    raw = fresh.client()
    junk_id = raw.xadd(AUDIT_STREAM, {"note": "written by hand"}).decode()
    code, output = verify(config_path)
    assert code == 1
    assert f"event {junk_id}: not an audit event" in output
    exported = cli("--config", str(config_path), "audit", "export")
    assert exported.returncode == 0, exported.stderr
    lines = [orjson.loads(line) for line in exported.stdout.splitlines()]
    assert lines[-1] == {"id": junk_id, "invalid": "not an audit event"}
    assert [line["action"] for line in lines[:-1]] == ["key.created", "key.created"]
