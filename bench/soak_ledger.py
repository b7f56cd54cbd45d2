"""The soak's books: the constants of its load, the keys it created and what it did
with them (the ledger), and what it saw (answers, errors, faults, samples, violations)
against the invariants it checks."""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import jwt

from bench.soak_rig import JWT_SECRET

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


def now() -> float:
    return time.time()


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


class Ledger:
    """The soak's users (each with a JWT) and every key it created, by what the load
    may still do with it."""

    def __init__(self) -> None:
        self.keys: dict[str, Key] = {}
        self.users = [f"soak-{uuid.uuid4().hex[:8]}-u{i}" for i in range(USERS)]
        self.tokens = {u: self._token(u) for u in self.users}
        self.stable: list[Key] = []
        self.pool: list[Key] = []
        self.fresh: deque[Key] = deque()  # created, never used yet
        self.revocable: deque[Key] = deque(maxlen=2000)  # created and used: in caches
        self.revoked: deque[Key] = deque(maxlen=500)
        self.active_count: Counter[str] = Counter()

    def _token(self, user: str) -> str:
        claims = {"sub": user, "iat": int(now()), "exp": int(now()) + 24 * 3600}
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    def add(self, key: Key) -> None:
        self.keys[key.id] = key
        self.active_count[key.user] += 1
        {"stable": self.stable, "pool": self.pool}.get(key.kind, self.fresh).append(key)


@dataclass
class Report:
    tail: float  # seconds after a fault still in its window
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
    peak: float | None = None  # closed-loop req/s; None with --rps
    rps: float = 0.0  # the open loop's target
    achieved: float = 0.0
    load_seconds: float = 0.0
    keys_checked: int = 0  # listed after the soak
    active_checked: int = 0  # used after the soak

    def violate(self, invariant: str, text: str) -> None:
        found = self.violations.setdefault(invariant, [])
        if len(found) < 20:
            found.append(f"t+{now() - self.started:.1f}s {text}")
        else:
            found[-1] = f"... and more (last: t+{now() - self.started:.1f}s {text})"

    def counts_against_revocation(self, revoked: float, seen: float) -> bool:
        """A revoked key that still works counts against the 1 s rule only when Redis
        answered throughout (a revocation feed lost in a Redis fault is covered by the
        documented stale window instead)."""
        if seen - revoked <= REVOKE_DEADLINE:
            return False
        for fault in self.faults:
            if fault["kind"] in REDIS_FAULTS:
                end = fault.get("end") or now()
                if fault["start"] <= seen and end + self.tail >= revoked:
                    return False
        return True
