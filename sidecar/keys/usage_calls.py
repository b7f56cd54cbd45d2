"""The Redis commands of use bookkeeping (schema.py names the keys): what one flush
adds, and what the usage endpoint reads back, both queued on a pipeline the store runs
in one round trip."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.core.domain import MAX_USAGE_NETWORKS, DailyUsage, NetworkUsage
from sidecar.core.timeutil import to_iso
from sidecar.keys.schema import (
    NETWORKS_KEPT,
    USAGE_KEPT_DAYS,
    record_key,
    usage_key,
    usage_networks_key,
    usage_seen_key,
)
from sidecar.keys.view import as_text

_KEPT_SECONDS = USAGE_KEPT_DAYS * 86400


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """Uses of one key on one UTC day, waiting to be added to Redis."""

    key_id: str
    day: str
    requests: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class NetworkCounts:
    """Uses of one key from one network on one UTC day, waiting to be added to Redis."""

    key_id: str
    day: str
    network: str
    requests: int
    last_seen: float  # epoch seconds


def queue_touch(
    pipe: Any,
    last_used: Mapping[str, str],
    counts: Sequence[UsageCounts],
    networks: Sequence[NetworkCounts],
) -> None:
    for key_id, moment in last_used.items():
        pipe.hset(record_key(key_id), "last_used_at", moment)
    for used in counts:
        name = usage_key(used.key_id, used.day)
        if used.requests:
            pipe.hincrby(name, "requests", used.requests)
        if used.rate_limited:
            pipe.hincrby(name, "rate_limited", used.rate_limited)
        pipe.expire(name, _KEPT_SECONDS)
    days: set[tuple[str, str]] = set()
    for seen in networks:
        names = usage_networks_key(seen.key_id, seen.day), usage_seen_key(seen.key_id, seen.day)
        pipe.zincrby(names[0], seen.requests, seen.network)
        pipe.zadd(names[1], {seen.network: seen.last_seen}, gt=True)  # two instances: the later
        days.add((seen.key_id, seen.day))
    for key_id, day in days:
        for name in (usage_networks_key(key_id, day), usage_seen_key(key_id, day)):
            pipe.zremrangebyrank(name, 0, -NETWORKS_KEPT - 1)  # the fewest / the oldest
            pipe.expire(name, _KEPT_SECONDS)


def queue_usage(pipe: Any, key_id: str, days: Sequence[str]) -> None:
    """The reads ``parse_usage`` takes the replies of."""
    pipe.hmget(record_key(key_id), "user_id", "key_prefix")
    for day in days:
        pipe.hmget(usage_key(key_id, day), "requests", "rate_limited")
        pipe.zrange(usage_networks_key(key_id, day), 0, -1, withscores=True)
        pipe.zrange(usage_seen_key(key_id, day), 0, -1, withscores=True)


def parse_usage(
    replies: Sequence[Any], days: Sequence[str]
) -> tuple[str | None, str | None, list[DailyUsage], list[NetworkUsage]]:
    """Owner, prefix, daily counts and the busiest networks of the window."""
    owner, prefix = (None if v is None else as_text(v) for v in replies[0])
    daily = []
    requests: dict[str, float] = {}
    last_seen: dict[str, float] = {}
    for i, day in enumerate(days):
        counted, networks, seen = replies[1 + 3 * i : 4 + 3 * i]
        daily.append(DailyUsage(day, int(counted[0] or 0), int(counted[1] or 0)))
        for member, score in networks:
            network = as_text(member)
            requests[network] = requests.get(network, 0) + score
        for member, score in seen:
            network = as_text(member)
            last_seen[network] = max(last_seen.get(network, 0.0), score)
    busiest = sorted(requests.items(), key=lambda item: (-item[1], item[0]))
    shown = [
        NetworkUsage(network, int(count), to_iso(datetime.fromtimestamp(last_seen[network], UTC)))
        for network, count in busiest
        if network in last_seen  # trimmed from one set but not the other: rare, left out
    ]
    return owner, prefix, daily, shown[:MAX_USAGE_NETWORKS]
