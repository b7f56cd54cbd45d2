"""Pure parts of the rate limiter: rule matching, compiled parameters, key names."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.model import RateLimitsConfig
from sidecar.ratelimit.rules import Rule, RuleTable, bucket_key

RULES = RateLimitsConfig.model_validate(
    {
        "default": {"requests": 100, "per_seconds": 60},
        "rules": [
            {"method": "POST", "path": "/api/v1/analysis/", "requests": 20, "per_seconds": 60},
            {"path": "/api/v1/analysis/exports", "requests": 5, "per_seconds": 60},
            {"method": "GET", "path": "/api/v1/reports", "requests": 50, "per_seconds": 10},
            {"path": "/api/v1/reports/bulk", "requests": 2, "per_seconds": 60},
            {"method": "DELETE", "path": "/", "requests": 3, "per_seconds": 1},
        ],
    }
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # the published policy: POST /api/v1/analysis/ and anything under it
        ("POST", "/api/v1/analysis/", "POST:/api/v1/analysis"),
        ("POST", "/api/v1/analysis", "POST:/api/v1/analysis"),
        ("POST", "/api/v1/analysis/123/retry", "POST:/api/v1/analysis"),
        ("POST", "/API/V1/Analysis/", "POST:/api/v1/analysis"),  # case-insensitive
        # first match wins: the POST rule shadows the later any-method rule
        ("POST", "/api/v1/analysis/exports", "POST:/api/v1/analysis"),
        ("GET", "/api/v1/analysis/exports/7", "*:/api/v1/analysis/exports"),
        # method must match exactly; others fall through to later rules or the default
        ("GET", "/api/v1/analysis/", "default"),
        ("HEAD", "/api/v1/analysis/", "default"),
        ("PUT", "/api/v1/analysis/exports", "*:/api/v1/analysis/exports"),
        # segment-aware: a prefix never matches inside a segment
        ("POST", "/api/v1/analysisx", "default"),
        ("GET", "/api/v1/analysis/exportsx", "default"),
        # a method rule listed before an any-method rule wins for its method only
        ("GET", "/api/v1/reports/bulk", "GET:/api/v1/reports"),
        ("POST", "/api/v1/reports/bulk", "*:/api/v1/reports/bulk"),
        ("GET", "/api/v1/reports", "GET:/api/v1/reports"),
        # "/" matches every path, for its method
        ("DELETE", "/anything/at/all", "DELETE:/"),
        ("DELETE", "/api/v1/analysis/", "DELETE:/"),
        ("GET", "/", "default"),
        ("OPTIONS", "/api/v1/reports", "default"),
    ],
)
def test_first_matching_rule_wins(method: str, path: str, expected: str) -> None:
    assert RuleTable(RULES).match(method, path).name == expected


def test_no_rules_means_default_everywhere() -> None:
    table = RuleTable(RateLimitsConfig())
    assert table.match("POST", "/api/v1/analysis/") is table.default
    assert table.default.requests == 100


@pytest.mark.parametrize(
    ("limit", "interval_us", "capacity_us"),
    [
        ({"requests": 100, "per_seconds": 60}, 600_000, 60_000_000),
        ({"requests": 20, "per_seconds": 60}, 3_000_000, 60_000_000),
        ({"requests": 3, "per_seconds": 1}, 333_333, 999_999),
        ({"requests": 1_000_000, "per_seconds": 0.001}, 1, 1_000_000),  # floor of 1 µs
    ],
)
def test_gcra_parameters(limit: dict[str, Any], interval_us: int, capacity_us: int) -> None:
    config = RateLimitsConfig.model_validate({"default": limit})
    rule = RuleTable(config).default
    assert (rule.interval_us, rule.capacity_us) == (interval_us, capacity_us)
    assert rule.fixed_headers == [(b"x-ratelimit-limit", str(limit["requests"]).encode())]


RULE = Rule("default", 1, 1, [(b"x-ratelimit-limit", b"1")], True, None)


@pytest.mark.parametrize(
    ("user_id", "key"),
    [
        ("user-1", "callcov:rl:{user-1}:default"),
        ("a}b", "callcov:rl:{a%7Db}:default"),
        ("}x", "callcov:rl:{%7Dx}:default"),
        ("{x}", "callcov:rl:{%7Bx%7D}:default"),
        ("50%7D", "callcov:rl:{50%257D}:default"),
        ("", "callcov:rl:{}:default"),
    ],
)
def test_bucket_key_hash_tag_is_the_whole_user_id(user_id: str, key: str) -> None:
    assert bucket_key(user_id, RULE) == key


def test_bucket_keys_are_distinct_per_user() -> None:
    ids = ["a}b", "a%7Db", "a{b", "a%7Bb", "a%b", "a%25b", "ab"]
    assert len({bucket_key(u, RULE) for u in ids}) == len(ids)
