"""The load the soak drives: the request mix (keys cached and fresh, JWTs, bad
credentials, key creation, listing, deletion and revocation), each answer judged as it
comes; revocations probed from just past their deadline; large uploads; the seeding,
the closed-loop peak measurement and the open loop itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time

import orjson

from bench.soak_cluster import Cluster
from bench.soak_ledger import (
    KEYS,
    MIX,
    PATH,
    POOL_KEYS,
    REVOKE_DEADLINE,
    STABLE_PER_USER,
    UPLOAD_BYTES,
    UPLOAD_EVERY,
    USERS,
    Key,
    Ledger,
    Report,
    now,
)
from bench.soak_rig import MAX_ACTIVE, Http, Pool
from sidecar.keys import format as keyformat


class Load:
    def __init__(self, cluster: Cluster, ledger: Ledger, report: Report, stop: asyncio.Event):
        self.cluster = cluster
        self.ledger = ledger
        self.report = report
        self.stop = stop
        self.probes: set[asyncio.Future[None]] = set()

    async def seed(self) -> None:
        """Keys the load uses from the start: two per user (cached), and a pool."""
        pool = Pool(self.cluster.a.port, 8)
        users = self.ledger.users

        async def create(user: str, kind: str) -> None:
            key = await self.create_key(pool, user, kind, count=False)
            if key is None:
                raise RuntimeError(f"could not create a seed key for {user}")

        await asyncio.gather(*(create(u, "stable") for u in users for _ in range(STABLE_PER_USER)))
        await asyncio.gather(*(create(users[i % USERS], "pool") for i in range(POOL_KEYS)))

    async def create_key(self, pool: Pool, user: str, kind: str, count: bool = True) -> Key | None:
        status, body = await pool.request(
            "POST",
            KEYS,
            [
                ("Authorization", f"Bearer {self.ledger.tokens[user]}"),
                ("Content-Type", "application/json"),
            ],
            orjson.dumps({"description": f"soak {kind}"}),
        )
        if count:
            self.report.statuses[f"create {status}"] += 1
            if status >= 500:
                self.report.errors.append((now(), now(), "create", str(status)))
            elif status != 201:
                self.report.violate("expected_statuses", f"create answered {status}")
        if status != 201:
            return None
        data = orjson.loads(body)
        key = Key(data["id"], user, data["api_key"], now(), kind)
        self.ledger.add(key)
        return key

    def pick(self) -> str:
        return random.choices(list(MIX), weights=list(MIX.values()))[0]

    async def one(self, pools: list[Pool], op: str) -> None:
        pool = random.choice(pools)
        started = now()
        self.report.ops[op] += 1
        try:
            await self._one(pool, op)
        except Exception as exc:  # no answer: reset, refused, timed out, cut short
            self.report.errors.append((started, now(), op, type(exc).__name__))
            self.report.statuses[f"{op} {type(exc).__name__}"] += 1

    def _key_for(self, op: str) -> Key | None:
        if op == "cached":
            return random.choice(self.ledger.stable)
        if op == "fresh":
            while self.ledger.fresh:
                key = self.ledger.fresh.popleft()
                if key.revoked is None and not key.uncertain:
                    return key
            return random.choice(self.ledger.pool)
        return None

    async def _one(self, pool: Pool, op: str) -> None:
        report, ledger = self.report, self.ledger
        if op in ("cached", "fresh"):
            key = self._key_for(op)
            assert key is not None
            status, _ = await pool.request(
                "GET", PATH, [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")]
            )
            self._note(op, status)
            if status == 401 and key.revoked is None and not key.uncertain:
                report.violate("valid_key_never_401", f"key {key.id} ({key.kind}) got 401")
            if status == 200 and key.kind == "created" and not key.used:
                key.used = True
                ledger.revocable.append(key)
        elif op == "jwt":
            user = random.choice(ledger.users)
            status, _ = await pool.request(
                "GET",
                PATH,
                [("Authorization", f"Bearer {ledger.tokens[user]}"), ("X-Soak-Tag", f"j:{user}")],
            )
            self._note(op, status)
            if status == 401:
                report.violate("valid_key_never_401", f"valid JWT of {user} got 401")
        elif op == "bad":
            await self._bad(pool)
        elif op == "create":
            user = random.choice(ledger.users)
            if ledger.active_count[user] >= MAX_ACTIVE - 50:
                return
            await self.create_key(pool, user, "created")
        elif op == "list":
            user = random.choice(ledger.users)
            status, _ = await pool.request(
                "GET", KEYS, [("Authorization", f"Bearer {ledger.tokens[user]}")]
            )
            self._note(op, status)
        elif op in ("delete", "revoke"):
            source = ledger.fresh if op == "delete" else ledger.revocable
            if not source:
                return
            key = source.popleft()
            await self._revoke(pool, key, op)

    def _note(self, op: str, status: int) -> None:
        self.report.statuses[f"{op} {status}"] += 1
        if status >= 500:
            self.report.errors.append((now(), now(), op, str(status)))
        elif op == "list" and status == 401:
            self.report.violate("valid_key_never_401", "a key listing with a valid JWT got 401")
        elif op in ("cached", "fresh", "jwt", "list") and status not in (200, 401):
            self.report.violate("expected_statuses", f"{op} answered {status}")

    async def _bad(self, pool: Pool) -> None:
        choice = random.random()
        if choice < 0.4 and self.ledger.revoked:
            key = random.choice(self.ledger.revoked)
            tag, value = f"k:{key.id}", key.api_key
        elif choice < 0.7:
            tag, value = "bad:malformed", "sk_live_" + "x" * 48
        else:
            tag, value = "bad:unknown", keyformat.generate()
        status, _ = await pool.request("GET", PATH, [("X-API-Key", value), ("X-Soak-Tag", tag)])
        self.report.statuses[f"bad {status}"] += 1
        if status >= 500:
            self.report.errors.append((now(), now(), "bad", str(status)))
        elif status != 401:
            if tag.startswith("k:"):
                key = self.ledger.keys[tag[2:]]
                assert key.revoked is not None
                if self.report.counts_against_revocation(key.revoked, now()):
                    self.report.violate(
                        "revoked_within_1s",
                        f"revoked key {key.id} answered {status} "
                        f"{now() - key.revoked:.2f}s after its DELETE",
                    )
            else:
                self.report.violate("no_unauthenticated_upstream", f"{tag} answered {status}")

    async def _revoke(self, pool: Pool, key: Key, op: str) -> None:
        headers = [("Authorization", f"Bearer {self.ledger.tokens[key.user]}")]
        try:
            status, _ = await pool.request("DELETE", f"{KEYS}{key.id}", headers)
        except BaseException:
            key.uncertain = True  # asked, no answer: it may or may not be revoked
            raise
        self._note(op, status)
        if status == 200:
            key.revoked = now()
            self.ledger.active_count[key.user] -= 1
            self.ledger.revoked.append(key)
            if op == "revoke":
                probe = asyncio.ensure_future(self._probe_revoked(key))
                self.probes.add(probe)
                probe.add_done_callback(self.probes.discard)
        elif status >= 500:
            key.uncertain = True
        else:
            self.report.violate("expected_statuses", f"DELETE of {key.id} answered {status}")

    async def _probe_revoked(self, key: Key) -> None:
        """From just past the deadline, the key must be refused by every instance."""
        assert key.revoked is not None
        await asyncio.sleep(REVOKE_DEADLINE + 0.05)
        self.report.revocations_checked += 1
        a, b = self.cluster.a, self.cluster.b
        for _ in range(2):
            for port in (a.port, b.port, b.port):
                conn = Http(port)  # a new connection: with workers, maybe another worker
                try:
                    status, _ = await conn.request(
                        "GET", PATH, [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")]
                    )
                except Exception:
                    continue
                finally:
                    conn.close()
                self.report.revocation_probes += 1
                if status == 200 and self.report.counts_against_revocation(key.revoked, now()):
                    self.report.violate(
                        "revoked_within_1s",
                        f"key {key.id} still accepted {now() - key.revoked:.2f}s after revocation",
                    )
            await asyncio.sleep(0.3)

    async def drive(self, rps: float, seconds: float, pools: list[Pool], cap: int) -> float:
        """Open loop at ``rps`` for ``seconds``; returns the rate achieved."""
        started = time.monotonic()
        issued = 0
        tasks: set[asyncio.Task[None]] = set()
        while (elapsed := time.monotonic() - started) < seconds and not self.stop.is_set():
            due = int(elapsed * rps) - issued
            for _ in range(max(0, due)):
                issued += 1
                if len(tasks) >= cap:
                    self.report.shed += 1
                    continue
                task = asyncio.ensure_future(self.one(pools, self.pick()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        return (issued - self.report.shed) / max(1e-9, time.monotonic() - started)

    async def measure_peak(self, seconds: float, pools: list[Pool]) -> float:
        """Closed loop: 32 clients each sending the mix back to back, over both instances.
        What it counts is then reset; the keys it creates stay in the ledger."""
        done = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await self.one(pools, self.pick())
                done += 1

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(32)))
        rate = done / (time.monotonic() - began)
        self.report.ops.clear()
        self.report.statuses.clear()
        self.report.errors.clear()
        return rate

    async def uploads(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), UPLOAD_EVERY)
            if self.stop.is_set():
                return
            key = random.choice(self.ledger.stable)
            port = random.choice((self.cluster.a.port, self.cluster.b.port))
            conn = Http(port)
            started = now()
            try:
                status, body = await conn.request(
                    "POST",
                    "/api/v1/soak/upload",
                    [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")],
                    upload=UPLOAD_BYTES,
                    timeout=120,
                )
            except Exception as exc:
                self.report.uploads["no answer"] += 1
                self.report.errors.append((started, now(), "upload", type(exc).__name__))
                continue
            finally:
                conn.close()
            self.report.uploads[str(status)] += 1
            if status >= 500:
                self.report.errors.append((started, now(), "upload", str(status)))
            elif status == 200:
                echoed = orjson.loads(body)
                expected = hashlib.sha256(b"\x5a" * UPLOAD_BYTES).hexdigest()
                if echoed != {"size": UPLOAD_BYTES, "sha256": expected}:
                    self.report.violate("uploads_intact", f"upload echoed {echoed}")
            elif status == 401:
                self.report.violate("valid_key_never_401", f"upload with {key.id} got 401")
            else:
                self.report.violate("expected_statuses", f"upload answered {status}")
