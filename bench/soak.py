"""Chaos soak: real processes under steady load while faults are injected, with the
sidecar's invariants checked all the time. ``bench/soak --help``; bench/README.md says
what it runs, which faults and which invariants, and how to read the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
from redis.asyncio import Redis

from bench.soak_rig import (
    JWT_SECRET,
    MAX_ACTIVE,
    ROOT,
    SERVICE,
    Http,
    Pool,
    Proc,
    RedisNode,
    Sentinel,
    SidecarInstance,
    find_binary,
    free_port,
)
from sidecar.keys import format as keyformat

PATH = "/api/v1/soak/items"
KEYS = "/api/v1/api-keys/"
USERS = 40
STABLE_PER_USER = 2  # "cached" keys: used all the time
POOL_KEYS = 200  # used now and then: cache misses and stale entries
UPLOAD_BYTES = 16 * 1024 * 1024
UPLOAD_EVERY = 20.0
REVOKE_DEADLINE = 1.0  # a revoked key is refused this long after its DELETE answered
REDIS_FAULTS = {"redis_kill", "redis_stop", "failover"}
FAULT_KINDS = ("redis_kill", "upstream_restart", "failover", "worker_kill", "redis_stop")
# op -> weight in the request mix
MIX = {
    "cached": 55,
    "fresh": 12,
    "jwt": 18,
    "bad": 6,
    "create": 4,
    "list": 2,
    "delete": 1.5,
    "revoke": 1.5,
}


def now() -> float:
    return time.time()


# --- the ledger -----------------------------------------------------------------------


@dataclass
class Key:
    id: str
    user: str
    api_key: str
    created: float
    kind: str  # "stable", "pool", "created"
    revoked: float | None = None  # when the DELETE answered 200
    uncertain: bool = False  # a DELETE without an answer: state unknown, not used again
    used: bool = False


@dataclass
class Report:
    started: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[str]] = field(default_factory=dict)
    errors: list[tuple[float, float, str, str]] = field(default_factory=list)  # 5xx / no answer
    faults: list[dict[str, Any]] = field(default_factory=list)
    revocations_checked: int = 0
    revocation_probes: int = 0
    upstream_lines: int = 0
    uploads: Counter[str] = field(default_factory=Counter)
    shed: int = 0
    samples: dict[tuple[str, int], list[tuple[float, int, int]]] = field(default_factory=dict)

    def violate(self, invariant: str, text: str) -> None:
        found = self.violations.setdefault(invariant, [])
        if len(found) < 20:
            found.append(f"t+{now() - self.started:.1f}s {text}")
        else:
            found[-1] = f"... and more (last: t+{now() - self.started:.1f}s {text})"


INVARIANTS = {
    "no_unauthenticated_upstream": "No request without a valid credential reached the upstream",
    "valid_key_never_401": "No request with a valid, unrevoked key (or valid JWT) got 401",
    "created_keys_exist": "Every key created during the soak exists afterwards",
    "revoked_within_1s": "A revoked key is rejected within 1 s once Redis answers",
    "rss_flat": "RSS drifts less than 10 % after warm-up",
    "fds_flat": "Open file descriptors stay flat after warm-up",
    "5xx_only_in_faults": "5xx (and unanswered requests) only inside fault windows + tail",
    "expected_statuses": "Every answer is one the request allows (no 400/404/422/429 ...)",
    "uploads_intact": "Large uploads arrive whole (size and SHA-256 echoed by the upstream)",
}


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.minutes * 60.0
        self.warmup = (
            args.warmup if args.warmup is not None else max(30.0, min(300.0, self.duration / 4))
        )
        self.work = ROOT / "bench" / "work" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
        self.work.mkdir(parents=True)
        self.report = Report()
        self.keys: dict[str, Key] = {}
        self.users = [f"soak-{uuid.uuid4().hex[:8]}-u{i}" for i in range(USERS)]
        self.tokens = {u: self._token(u) for u in self.users}
        self.stable: list[Key] = []
        self.pool: list[Key] = []
        self.fresh: deque[Key] = deque()  # created, never used yet
        self.revocable: deque[Key] = deque(maxlen=2000)  # created and used: in caches
        self.revoked: deque[Key] = deque(maxlen=500)
        self.active_count: Counter[str] = Counter()
        self.probes: set[asyncio.Future[None]] = set()
        self.stop_load = asyncio.Event()
        self.procs: list[Proc] = []
        self.record = self.work / "upstream-record.jsonl"
        self.record_offset = 0

    def _token(self, user: str) -> str:
        claims = {"sub": user, "iat": int(now()), "exp": int(now()) + 24 * 3600}
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    # --- set-up ---------------------------------------------------------------------

    def start_processes(self) -> None:
        self.master = RedisNode(self.work, "redis-a")
        self.master.proc.start()
        self.replica = RedisNode(self.work, "redis-b", replica_of=self.master.port)
        self.replica.proc.start()
        self.nodes = {self.master.port: self.master, self.replica.port: self.replica}
        self.sentinel = Sentinel(self.work, self.master.port)
        self.sentinel.proc.start()
        self.upstream_port = free_port()
        self.upstream = Proc(
            "upstream",
            [
                sys.executable,
                str(ROOT / "bench" / "soak_upstream.py"),
                "--port",
                str(self.upstream_port),
                "--record",
                str(self.record),
            ],
            self.work / "upstream.log",
        )
        self.upstream.start()
        self.a = SidecarInstance(self.work, "sidecar-a", self.upstream_port, self.sentinel.port, 1)
        self.b = SidecarInstance(self.work, "sidecar-b", self.upstream_port, self.sentinel.port, 2)
        self.procs = [
            self.master.proc,
            self.replica.proc,
            self.sentinel.proc,
            self.upstream,
            self.a.proc,
            self.b.proc,
        ]
        self.a.proc.start()
        self.b.proc.start()

    def stop_processes(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()

    async def master_port(self) -> int | None:
        client = Redis(port=self.sentinel.port, socket_timeout=1)
        try:
            found = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(found[1]) if found else None
        except Exception:
            return None
        finally:
            await client.aclose()

    async def healthy(self) -> list[str]:
        """What is not back yet; [] when everything answers."""
        problems = []
        port = await self.master_port()
        ok = False
        if port is not None:
            client = Redis(port=port, socket_timeout=1)
            try:
                role = await client.execute_command("ROLE")
                ok = role[0] in (b"master", "master")
            except Exception:
                ok = False
            finally:
                await client.aclose()
        if not ok:
            problems.append("redis master")
        for instance in (self.a, self.b):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", instance.admin_port), 2
                )
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                head = await asyncio.wait_for(reader.read(64), 4)
                writer.close()
                if b" 200 " not in head[:16]:
                    problems.append(f"{instance.name} /readyz")
            except Exception:
                problems.append(f"{instance.name} admin")
        return problems

    async def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.healthy():
                return True
            await asyncio.sleep(0.2)
        return False

    async def seed(self) -> None:
        """Keys the load uses from the start: two per user (cached), and a pool."""
        pool = Pool(self.a.port, 8)

        async def create(user: str, kind: str) -> None:
            key = await self.create_key(pool, user, kind, count=False)
            if key is None:
                raise RuntimeError(f"could not create a seed key for {user}")

        await asyncio.gather(
            *(create(u, "stable") for u in self.users for _ in range(STABLE_PER_USER))
        )
        await asyncio.gather(*(create(self.users[i % USERS], "pool") for i in range(POOL_KEYS)))

    async def create_key(self, pool: Pool, user: str, kind: str, count: bool = True) -> Key | None:
        status, body = await pool.request(
            "POST",
            KEYS,
            [
                ("Authorization", f"Bearer {self.tokens[user]}"),
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
        self.keys[key.id] = key
        self.active_count[user] += 1
        {"stable": self.stable, "pool": self.pool}.get(kind, self.fresh).append(key)
        return key

    # --- load ---------------------------------------------------------------------

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
            return random.choice(self.stable)
        if op == "fresh":
            while self.fresh:
                key = self.fresh.popleft()
                if key.revoked is None and not key.uncertain:
                    return key
            return random.choice(self.pool)
        return None

    async def _one(self, pool: Pool, op: str) -> None:
        report = self.report
        if op in ("cached", "fresh"):
            key = self._key_for(op)
            assert key is not None
            status, _ = await pool.request(
                "GET", PATH, [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")]
            )
            self._note(op, status, pool)
            if status == 401 and key.revoked is None and not key.uncertain:
                report.violate("valid_key_never_401", f"key {key.id} ({key.kind}) got 401")
            if status == 200 and key.kind == "created" and not key.used:
                key.used = True
                self.revocable.append(key)
        elif op == "jwt":
            user = random.choice(self.users)
            status, _ = await pool.request(
                "GET",
                PATH,
                [("Authorization", f"Bearer {self.tokens[user]}"), ("X-Soak-Tag", f"j:{user}")],
            )
            self._note(op, status, pool)
            if status == 401:
                report.violate("valid_key_never_401", f"valid JWT of {user} got 401")
        elif op == "bad":
            await self._bad(pool)
        elif op == "create":
            user = random.choice(self.users)
            if self.active_count[user] >= MAX_ACTIVE - 50:
                return
            await self.create_key(pool, user, "created")
        elif op == "list":
            user = random.choice(self.users)
            status, _ = await pool.request(
                "GET", KEYS, [("Authorization", f"Bearer {self.tokens[user]}")]
            )
            self._note(op, status, pool)
        elif op in ("delete", "revoke"):
            source = self.fresh if op == "delete" else self.revocable
            if not source:
                return
            key = source.popleft()
            await self._revoke(pool, key, op)

    def _note(self, op: str, status: int, pool: Pool) -> None:
        self.report.statuses[f"{op} {status}"] += 1
        if status >= 500:
            self.report.errors.append((now(), now(), op, str(status)))
        elif op == "list" and status == 401:
            self.report.violate("valid_key_never_401", "a key listing with a valid JWT got 401")
        elif op in ("cached", "fresh", "jwt", "list") and status not in (200, 401):
            self.report.violate("expected_statuses", f"{op} answered {status}")

    async def _bad(self, pool: Pool) -> None:
        choice = random.random()
        if choice < 0.4 and self.revoked:
            key = random.choice(self.revoked)
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
                key = self.keys[tag[2:]]
                assert key.revoked is not None
                if self._counts_against_revocation(key.revoked, now()):
                    self.report.violate(
                        "revoked_within_1s",
                        f"revoked key {key.id} answered {status} "
                        f"{now() - key.revoked:.2f}s after its DELETE",
                    )
            else:
                self.report.violate("no_unauthenticated_upstream", f"{tag} answered {status}")

    async def _revoke(self, pool: Pool, key: Key, op: str) -> None:
        headers = [("Authorization", f"Bearer {self.tokens[key.user]}")]
        try:
            status, _ = await pool.request("DELETE", f"{KEYS}{key.id}", headers)
        except BaseException:
            key.uncertain = True  # asked, no answer: it may or may not be revoked
            raise
        self._note(op, status, pool)
        if status == 200:
            key.revoked = now()
            self.active_count[key.user] -= 1
            self.revoked.append(key)
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
        for _ in range(2):
            for port in (self.a.port, self.b.port, self.b.port):
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
                if status == 200 and self._counts_against_revocation(key.revoked, now()):
                    self.report.violate(
                        "revoked_within_1s",
                        f"key {key.id} still accepted {now() - key.revoked:.2f}s after revocation",
                    )
            await asyncio.sleep(0.3)

    def _counts_against_revocation(self, revoked: float, seen: float) -> bool:
        """A revoked key that still works counts against the 1 s rule only when Redis
        answered throughout (a revocation feed lost in a Redis fault is covered by the
        documented stale window instead)."""
        if seen - revoked <= REVOKE_DEADLINE:
            return False
        for fault in self.report.faults:
            if fault["kind"] in REDIS_FAULTS:
                end = fault.get("end") or now()
                if fault["start"] <= seen and end + self.args.tail >= revoked:
                    return False
        return True

    async def drive(self, rps: float, seconds: float, pools: list[Pool], cap: int) -> float:
        """Open loop at ``rps`` for ``seconds``; returns the rate achieved."""
        started = time.monotonic()
        issued = 0
        tasks: set[asyncio.Task[None]] = set()
        while (elapsed := time.monotonic() - started) < seconds and not self.stop_load.is_set():
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

    async def uploads(self, pools: list[Pool]) -> None:
        while not self.stop_load.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_load.wait(), UPLOAD_EVERY)
            if self.stop_load.is_set():
                return
            key = random.choice(self.stable)
            port = random.choice((self.a.port, self.b.port))
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

    # --- the upstream's record --------------------------------------------------------

    def check_upstream_record(self) -> None:
        try:
            with open(self.record, "rb") as record:
                record.seek(self.record_offset)
                data = record.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.record_offset += end
        for raw in data[:end].splitlines():
            self.report.upstream_lines += 1
            self._check_line(orjson.loads(raw))

    def _check_line(self, line: dict[str, Any]) -> None:
        tag = line.get("tag") or ""
        bad = "no_unauthenticated_upstream"
        if line.get("api_key_header"):
            self.report.violate(bad, "an X-API-Key header reached the upstream")
        if tag.startswith("k:"):
            key = self.keys.get(tag[2:])
            if key is None:
                self.report.violate(bad, f"unknown key tag {tag} reached the upstream")
                return
            if (line["user"], line["method"], line["key"]) != (key.user, "api_key", key.id):
                self.report.violate(
                    bad,
                    f"key {key.id} of {key.user} arrived as user={line['user']} "
                    f"method={line['method']} key={line['key']}",
                )
            if key.revoked is not None and self._counts_against_revocation(key.revoked, line["t"]):
                self.report.violate(
                    "revoked_within_1s",
                    f"revoked key {key.id} reached the upstream "
                    f"{line['t'] - key.revoked:.2f}s after its DELETE",
                )
        elif tag.startswith("j:"):
            if (line["user"], line["method"], line["key"]) != (tag[2:], "jwt", None):
                self.report.violate(bad, f"JWT of {tag[2:]} arrived as {line['user']}")
        else:
            self.report.violate(bad, f"request tagged {tag!r} reached the upstream")

    async def watch_record(self) -> None:
        while not self.stop_load.is_set():
            self.check_upstream_record()
            await asyncio.sleep(1.0)

    # --- resources --------------------------------------------------------------------

    def sample(self) -> None:
        t = now()
        procs = [("sidecar-a", self.a.proc.pid), ("sidecar-b supervisor", self.b.proc.pid)]
        procs += [("sidecar-b worker", pid) for pid in self.b.worker_pids()]
        for label, pid in procs:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(int(s.split()[1]) for s in status.splitlines() if s.startswith("VmRSS"))
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration):
                continue
            self.report.samples.setdefault((label, pid), []).append((t, rss, fds))

    def describe_fds(self, name: str) -> None:
        """What each sidecar process holds open, for a look after the run: fd kinds,
        and its TCP connections by peer port (whose port is in the legend)."""
        ports = {
            self.a.port: "sidecar-a public",
            self.b.port: "sidecar-b public",
            self.upstream_port: "upstream",
            self.sentinel.port: "sentinel",
            **{node.port: node.name for node in self.nodes.values()},
        }
        lines = [f"ports: {ports}"]
        procs = [("sidecar-a", self.a.proc.pid), ("sidecar-b supervisor", self.b.proc.pid)]
        procs += [("sidecar-b worker", pid) for pid in self.b.worker_pids()]
        for label, pid in procs:
            kinds: Counter[str] = Counter()
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        kinds[target.split(":")[0] if ":" in target else "file"] += 1
            lines.append(f"{label} pid {pid}: {dict(kinds)}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            lines.append(
                subprocess.run(["ss", "-tanp"], capture_output=True, text=True, timeout=10).stdout
            )
        (self.work / name).write_text("\n".join(lines) + "\n")

    async def sampler(self) -> None:
        described = False
        while not self.stop_load.is_set():
            self.sample()
            if not described and now() >= self.report.started + self.warmup:
                self.describe_fds("fds-after-warmup.txt")
                described = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_load.wait(), 5.0)

    # --- faults -----------------------------------------------------------------------

    async def faults(self, load_started: float) -> None:
        count = max(len(FAULT_KINDS), round(self.args.minutes))
        first, last = 20.0, self.duration - 30.0
        spacing = max(10.0, (last - first) / count)
        for index in range(count):
            at = load_started + first + index * spacing
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_load.wait(), max(0.0, at - time.monotonic()))
            if self.stop_load.is_set() or time.monotonic() - load_started > last:
                return
            await self.fault(FAULT_KINDS[index % len(FAULT_KINDS)])

    async def fault(self, kind: str) -> None:
        entry: dict[str, Any] = {"kind": kind, "start": now(), "end": None, "note": ""}
        self.report.faults.append(entry)
        print(f"[t+{now() - self.report.started:6.1f}s] fault: {kind}", flush=True)
        if kind in ("redis_kill", "redis_stop"):
            port = await self.master_port()
            node = self.nodes.get(port or -1)
            if node is None:
                entry["note"] = "no master known"
            elif kind == "redis_kill":
                node.proc.signal(signal.SIGKILL)
                node.proc.popen.wait(5)  # type: ignore[union-attr]
                await asyncio.sleep(2.0)
                node.proc.start()
                entry["note"] = f"{node.name} killed, restarted after 2 s"
            else:
                node.proc.signal(signal.SIGSTOP)
                await asyncio.sleep(5.0)
                node.proc.signal(signal.SIGCONT)
                entry["note"] = f"{node.name} frozen 5 s"
        elif kind == "failover":
            before = await self.master_port()
            client = Redis(port=self.sentinel.port, socket_timeout=5)
            try:
                await client.execute_command("SENTINEL", "FAILOVER", SERVICE)
            except Exception as exc:
                entry["note"] = f"SENTINEL FAILOVER refused: {exc}"
            finally:
                await client.aclose()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and await self.master_port() == before:
                await asyncio.sleep(0.2)
            after = await self.master_port()
            entry["note"] = entry["note"] or (
                f"master {self.nodes[before].name if before in self.nodes else before} -> "
                f"{self.nodes[after].name if after in self.nodes else after}"
            )
        elif kind == "upstream_restart":
            self.upstream.stop()
            self.upstream.start()
            entry["note"] = "SIGTERM, started again on the same port"
        elif kind == "worker_kill":
            workers = self.b.worker_pids()
            if workers:
                victim = random.choice(workers)
                os.kill(victim, signal.SIGKILL)
                entry["note"] = f"sidecar-b worker pid {victim} SIGKILLed"
                await asyncio.sleep(0.5)  # let the supervisor notice before asking /readyz
            else:
                entry["note"] = "no worker found"
        recovered = await self.wait_healthy(60)
        entry["end"] = now()
        entry["recovered"] = recovered
        if not recovered:
            entry["note"] += f"; NOT healthy after 60 s: {await self.healthy()}"

    # --- the run --------------------------------------------------------------------

    async def run(self) -> int:
        self.start_processes()
        try:
            if not await self.wait_healthy(90):
                print(f"soak: the set-up did not become healthy: {await self.healthy()}")
                return 2
            self.report.started = now()
            await self.seed()
            pools = [Pool(self.a.port, 24), Pool(self.b.port, 24)]
            if self.args.rps:
                peak, rps = None, float(self.args.rps)
            else:
                print(f"soak: measuring the peak for {self.args.peak_seconds:.0f} s", flush=True)
                peak = await self.measure_peak(self.args.peak_seconds, pools)
                rps = 0.8 * peak
            self.peak, self.rps = peak, rps
            print(f"soak: load {rps:.0f} req/s for {self.args.minutes} min", flush=True)
            self.check_upstream_record()  # the seeding and the peak run are checked too
            self.report.started = now()
            load_started = time.monotonic()
            side = [
                asyncio.ensure_future(self.faults(load_started)),
                asyncio.ensure_future(self.watch_record()),
                asyncio.ensure_future(self.sampler()),
                asyncio.ensure_future(self.uploads(pools)),
            ]
            self.achieved = await self.drive(rps, self.duration, pools, cap=64)
            self.describe_fds("fds-at-end.txt")
            self.stop_load.set()
            await asyncio.gather(*side, return_exceptions=True)
            self.load_seconds = time.monotonic() - load_started
            await asyncio.sleep(REVOKE_DEADLINE + 1.5)  # the last revocation probes
            await self.wait_healthy(60)
            self.check_upstream_record()
            await self.final_checks()
        finally:
            self.stop_processes()
        return self.write_report()

    async def final_checks(self) -> None:
        """Every key created exists (listed with include_expired), in the state the
        ledger says; active ones still authenticate."""
        pool = Pool(self.a.port, 8)
        listed: dict[str, dict[str, Any]] = {}
        for user in self.users:
            status, body = await pool.request(
                "GET",
                KEYS + "?include_expired=true",
                [("Authorization", f"Bearer {self.tokens[user]}")],
            )
            if status != 200:
                self.report.violate("created_keys_exist", f"listing {user} answered {status}")
                continue
            for item in orjson.loads(body)["api_keys"]:
                listed[item["id"]] = item
        missing = wrong = 0
        for key in self.keys.values():
            item = listed.get(key.id)
            if item is None:
                missing += 1
                self.report.violate("created_keys_exist", f"key {key.id} ({key.kind}) is gone")
            elif not key.uncertain and item["is_active"] != (key.revoked is None):
                wrong += 1
                self.report.violate(
                    "created_keys_exist",
                    f"key {key.id} is_active={item['is_active']}, ledger says "
                    f"{'revoked' if key.revoked else 'active'}",
                )
        self.keys_checked = len(self.keys)
        active = [k for k in self.keys.values() if k.revoked is None and not k.uncertain]
        sample = random.sample(active, min(300, len(active)))
        for key in sample:
            status, _ = await pool.request(
                "GET", PATH, [("X-API-Key", key.api_key), ("X-Soak-Tag", f"k:{key.id}")]
            )
            if status != 200:
                self.report.violate(
                    "valid_key_never_401", f"after the soak, active key {key.id} got {status}"
                )
        self.active_checked = len(sample)
        self.check_upstream_record()

    # --- verdicts and the report ------------------------------------------------------

    def resource_verdicts(self) -> tuple[list[str], list[str], bool, bool]:
        """RSS per process (one that started after the warm-up, a replaced worker, is not
        judged); open fds per instance, summed over its processes, because when a worker
        dies the kernel hands its connections to the other one."""
        warm_end = self.report.started + self.warmup
        rss_rows, rss_ok = [], True
        by_instance: dict[str, dict[float, int]] = {}
        for (label, pid), samples in sorted(self.report.samples.items()):
            instance = label.split()[0]
            for t, _, fds in samples:
                sums = by_instance.setdefault(instance, {})
                sums[t] = sums.get(t, 0) + fds
            after = [s for s in samples if s[0] >= warm_end]
            if len(after) < 6 or after[0][0] - samples[0][0] < self.warmup * 0.9:
                born = "started after warm-up" if samples[0][0] > warm_end - 5 else "too few"
                cells = f"| {label} | {pid} | {len(samples)} | - | - |"
                rss_rows.append(f"{cells} not judged ({born}) |")
                continue
            base = statistics.median(s[1] for s in after[:3])
            end = statistics.median(s[1] for s in after[-3:])
            peak = max(s[1] for s in after)
            drift = (peak - base) / base
            rss_ok &= drift < 0.10
            rss_rows.append(
                f"| {label} | {pid} | {len(samples)} | {base / 1024:.1f} -> {end / 1024:.1f} "
                f"(max {peak / 1024:.1f}) | {drift * 100:+.1f} % | "
                f"{'ok' if drift < 0.10 else 'FAIL'} |"
            )
        fd_rows, fds_ok = [], True
        for instance, sums in sorted(by_instance.items()):
            series = [sums[t] for t in sorted(sums) if t >= warm_end]
            if len(series) < 6:
                fd_rows.append(f"| {instance} | - | - | - | not judged (too few samples) |")
                continue
            # The floor of the first and of the last fifth: connections that come and go
            # with the load (probes, uploads, the upstream pool) lift single samples; a
            # leak lifts the floor.
            span = max(3, len(series) // 5)
            base = min(series[:span])
            end = min(series[-span:])
            slack = max(10.0, 0.1 * base)
            flat = abs(end - base) <= slack
            fds_ok &= flat
            fd_rows.append(
                f"| {instance} | floor {base:.0f} -> {end:.0f} | {min(series)}..{max(series)} | "
                f"±{slack:.0f} | {'ok' if flat else 'FAIL'} |"
            )
        return rss_rows, fd_rows, rss_ok, fds_ok

    def error_windows(self) -> tuple[int, int, list[str]]:
        inside = outside = 0
        stray: list[str] = []
        for start, end, op, what in self.report.errors:
            hit = False
            for fault in self.report.faults:
                f_end = (fault.get("end") or now()) + self.args.tail
                if start <= f_end and end >= fault["start"]:
                    hit = True
                    fault["errors"] = fault.get("errors", 0) + 1
                    break
            if hit:
                inside += 1
            else:
                outside += 1
                if len(stray) < 20:
                    stray.append(f"t+{start - self.report.started:.1f}s {op}: {what}")
        return inside, outside, stray

    def write_report(self) -> int:
        report = self.report
        rss_rows, fd_rows, rss_ok, fds_ok = self.resource_verdicts()
        inside, outside, stray = self.error_windows()
        for line in stray:
            report.violate("5xx_only_in_faults", line)
        if not rss_ok:
            report.violate("rss_flat", "see the resources table")
        if not fds_ok:
            report.violate("fds_flat", "see the resources table")
        verdicts = {name: name not in report.violations for name in INVARIANTS}
        unhealthy = [f for f in report.faults if not f.get("recovered")]
        passed = all(verdicts.values()) and not unhealthy
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "sidecar"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        total = sum(report.ops.values())
        kinds = Counter(f["kind"] for f in report.faults)
        load1, load5, _ = os.getloadavg()
        lines = [
            f"# Chaos soak {time.strftime('%Y-%m-%d %H:%M', time.localtime(report.started))}"
            f" at {commit}{' (sidecar/ modified)' if dirty else ''}: "
            f"**{'PASS' if passed else 'FAIL'}**",
            "",
            f"Command: `bench/soak {' '.join(sys.argv[1:])}`. Machine: {os.cpu_count()} CPUs, "
            f"load average {load1:.1f} / {load5:.1f} (1 / 5 min) at the end.",
            "",
            "## Set-up",
            "",
            "Real processes on 127.0.0.1: Redis master + replica (redis-server "
            f"{find_binary()}, AOF on), one Sentinel (quorum 1, down-after 10 s) watching "
            f"`{SERVICE}`; sidecar-a (1 process) and sidecar-b (`--workers 2`), both on "
            f"`redis+sentinel://`; the soak upstream (`bench/soak_upstream.py`, uvicorn). "
            f"{USERS} users, {USERS * STABLE_PER_USER} cached keys, {POOL_KEYS} pool keys.",
            "",
            "## Load",
            "",
            f"- measured peak: {f'{self.peak:.0f} req/s' if self.peak else 'not measured (--rps)'}"
            f"; target {self.rps:.0f} req/s"
            f"{' (80 % of the peak)' if self.peak else ''}; achieved {self.achieved:.0f} req/s "
            f"over {self.load_seconds / 60:.1f} min ({total} requests; {report.shed} shed "
            "because 64 were already in flight)",
            "- mix: " + ", ".join(f"{op} {report.ops[op]}" for op in MIX),
            f"- large uploads ({UPLOAD_BYTES // (1024 * 1024)} MiB, every {UPLOAD_EVERY:.0f} s): "
            + (", ".join(f"{k}: {v}" for k, v in sorted(report.uploads.items())) or "none"),
            f"- upstream record lines checked against the ledger: {report.upstream_lines}",
            f"- revocations probed 1 s after their DELETE: {report.revocations_checked} "
            f"({report.revocation_probes} probes)",
            "",
            "Answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items())),
            "",
            "## Faults",
            "",
            "Counts: " + ", ".join(f"{k} {kinds[k]}" for k in FAULT_KINDS),
            "",
            "| # | fault | at | lasted until healthy | 5xx/unanswered in window + tail | note |",
            "|---|---|---|---|---|---|",
        ]
        for i, fault in enumerate(report.faults, 1):
            lasted = (fault.get("end") or now()) - fault["start"]
            lines.append(
                f"| {i} | {fault['kind']} | t+{fault['start'] - report.started:.0f}s | "
                f"{lasted:.1f} s{'' if fault.get('recovered') else ' (NOT recovered)'} | "
                f"{fault.get('errors', 0)} | {fault['note']} |"
            )
        lines += [
            "",
            f"5xx and unanswered requests: {inside} inside fault windows (+{self.args.tail:.0f} s "
            f"tail), {outside} outside.",
            "",
            "## Invariants",
            "",
            "| invariant | verdict | evidence |",
            "|---|---|---|",
        ]
        for name, text in INVARIANTS.items():
            found = report.violations.get(name, [])
            evidence = "<br>".join(found[:5]) if found else self._evidence(name, inside)
            lines.append(f"| {text} | {'holds' if verdicts[name] else 'VIOLATED'} | {evidence} |")
        lines += [
            "",
            f"## Resources (sampled every 5 s; judged after a warm-up of {self.warmup:.0f} s)",
            "",
            "RSS per process: drift = the highest sample after the warm-up against the "
            "first ones after it (medians of 3); must stay under +10 %.",
            "",
            "| process | pid | samples | RSS MiB | drift | verdict |",
            "|---|---|---|---|---|---|",
            *rss_rows,
            "",
            "Open file descriptors per instance (all its processes): the lowest count in "
            "the last fifth of the samples after the warm-up against the lowest in the "
            "first fifth (connections that come and go with the load lift single samples; "
            "a leak lifts the floor), within the slack.",
            "",
            "| instance | fds start -> end | range | slack | verdict |",
            "|---|---|---|---|---|",
            *fd_rows,
            "",
            f"Work directory: `{self.work.relative_to(ROOT)}` (logs, configs, the upstream "
            "record, soak-data.json with every sample, fault and error, and what each "
            "sidecar held open after the warm-up and at the end: fds-*.txt)",
        ]
        if any(report.violations.values()):
            lines += ["", "## Violations in detail", ""]
            for name, found in report.violations.items():
                lines += [f"- {name}:"] + [f"  - {item}" for item in found]
        text = "\n".join(lines) + "\n"
        raw = {
            "faults": report.faults,
            "errors": report.errors,
            "samples": [
                {"label": label, "pid": pid, "series": series}
                for (label, pid), series in report.samples.items()
            ],
        }
        (self.work / "soak-data.json").write_bytes(orjson.dumps(raw))
        out = (
            ROOT
            / "bench"
            / "results"
            / (
                f"soak-{time.strftime('%Y-%m-%d', time.localtime(report.started))}-{commit}-"
                f"{self.args.minutes:g}min.md"
            )
        )
        out.write_text(text)
        print(text)
        print(f"soak: {'PASS' if passed else 'FAIL'}; report written to {out.relative_to(ROOT)}")
        return 0 if passed else 1

    def _evidence(self, name: str, inside: int) -> str:
        report = self.report
        if name == "no_unauthenticated_upstream":
            bad = sum(v for k, v in report.statuses.items() if k.startswith("bad "))
            return f"{report.upstream_lines} upstream requests checked; {bad} bad credentials sent"
        if name == "valid_key_never_401":
            return f"{report.ops['cached'] + report.ops['fresh'] + report.ops['jwt']} requests"
        if name == "created_keys_exist":
            return (
                f"{getattr(self, 'keys_checked', 0)} keys listed in the right state; "
                f"{getattr(self, 'active_checked', 0)} active ones used after the soak"
            )
        if name == "revoked_within_1s":
            return f"{report.revocations_checked} revocations, {report.revocation_probes} probes"
        if name == "5xx_only_in_faults":
            return f"{inside} inside windows, 0 outside"
        if name in ("rss_flat", "fds_flat"):
            return "the Resources tables below"
        if name == "expected_statuses":
            return "every answer counted under Load"
        if name == "uploads_intact":
            return ", ".join(f"{k}: {v}" for k, v in sorted(report.uploads.items())) or "none"
        return "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description="Chaos soak of the sidecar: real Redis + Sentinel, two sidecars, steady "
        "load, injected faults, invariants checked all the time (bench/README.md).",
    )
    parser.add_argument("--minutes", type=float, default=30, help="length of the load (30)")
    parser.add_argument("--rps", type=float, help="load in req/s (default: 80 %% of the peak)")
    parser.add_argument("--peak-seconds", type=float, default=10, help="peak measurement (10)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before resources are judged (default: a quarter "
        "of the run, between 30 and 300)",
    )
    parser.add_argument(
        "--tail", type=float, default=10, help="seconds after a fault still in its window (10)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random)")
    args = parser.parse_args()
    random.seed(args.seed)
    soak = Soak(args)
    loop_run: Any
    try:
        import uvloop

        loop_run = uvloop.run
    except ImportError:  # pragma: no cover
        loop_run = asyncio.run
    try:
        return int(loop_run(soak.run()))
    except KeyboardInterrupt:
        soak.stop_processes()
        return 130


if __name__ == "__main__":
    sys.exit(main())
