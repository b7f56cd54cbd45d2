"""``rate_limits.headers``: draft-ietf-httpapi-ratelimit-headers-10 structured fields
(RFC 9651), next to or instead of X-RateLimit-*. Rule compilation, then end to end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sidecar.config.model import RateLimitsConfig
from sidecar.ratelimit.rules import RuleTable, sf_string
from tests.conftest import make_token

LIMITS: dict[str, Any] = {
    "enabled": True,
    "default": {"requests": 5, "per_seconds": 60},
    "rules": [
        {"method": "POST", "path": "/api/v1/analysis/", "requests": 2, "per_seconds": 60},
        {"path": "/api/v1/named", "requests": 3, "per_seconds": 10, "name": "named budget"},
        {"path": "/api/v1/half", "requests": 1, "per_seconds": 0.5},
    ],
}


@pytest.mark.parametrize(
    ("method", "path", "policy"),
    [
        ("GET", "/x", b'"default";q=5;w=60'),
        ("POST", "/api/v1/analysis/1", b'"POST /api/v1/analysis/";q=2;w=60'),
        ("GET", "/api/v1/named/1", b'"named budget";q=3;w=10'),
        ("GET", "/api/v1/half", b'"* /api/v1/half";q=1;w=1'),  # w is whole seconds
    ],
)
def test_policies(method: str, path: str, policy: bytes) -> None:
    config = RateLimitsConfig.model_validate({**LIMITS, "headers": "ietf"})
    rule = RuleTable(config).match(method, path)
    assert rule.fixed_headers == [(b"ratelimit-policy", policy)]
    name = policy.partition(b";")[0]
    assert rule.headers(4, 12) == [
        (b"ratelimit-policy", policy),
        (b"ratelimit", name + b";r=4;t=12"),
    ]


def test_both_and_the_default_style() -> None:
    both = RuleTable(RateLimitsConfig.model_validate({**LIMITS, "headers": "both"})).default
    assert [name for name, _ in both.headers(1, 2)] == [
        b"x-ratelimit-limit", b"ratelimit-policy", b"x-ratelimit-remaining",
        b"x-ratelimit-reset", b"ratelimit",
    ]  # fmt: skip
    legacy = RuleTable(RateLimitsConfig.model_validate(LIMITS)).default
    assert legacy.headers(1, 2) == [
        (b"x-ratelimit-limit", b"5"),
        (b"x-ratelimit-remaining", b"1"),
        (b"x-ratelimit-reset", b"2"),
    ]


def test_sf_string_escapes() -> None:
    assert sf_string('a "b" \\ c') == b'"a \\"b\\" \\\\ c"'
    assert sf_string("/caf\u00e9") == b'"/caf?"'


def test_a_rule_name_must_be_printable_ascii() -> None:
    with pytest.raises(ValueError, match="name"):
        RateLimitsConfig.model_validate(
            {"rules": [{"path": "/a", "requests": 1, "per_seconds": 1, "name": "caf\u00e9"}]}
        )


@pytest.mark.parametrize("style", ["ietf", "both"])
def test_end_to_end(spawn: Any, config_for: Any, user: str, style: str) -> None:
    sidecar = spawn(config_for(rate_limits={**LIMITS, "headers": style}))
    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    first = httpx.post(sidecar.url + "/api/v1/analysis/", headers=bearer)
    assert first.headers["ratelimit-policy"] == '"POST /api/v1/analysis/";q=2;w=60'
    assert first.headers["ratelimit"] == '"POST /api/v1/analysis/";r=1;t=30'
    httpx.post(sidecar.url + "/api/v1/analysis/", headers=bearer)
    refused = httpx.post(sidecar.url + "/api/v1/analysis/", headers=bearer)
    assert refused.status_code == 429
    name, remaining, until_full = refused.headers["ratelimit"].split(";")
    assert (name, remaining) == ('"POST /api/v1/analysis/"', "r=0")
    assert until_full in ("t=59", "t=60")  # 60 s less the time since the first request
    assert int(refused.headers["retry-after"]) >= 1
    assert ("x-ratelimit-limit" in first.headers) == (style == "both")
    named = httpx.get(sidecar.url + "/api/v1/named", headers=bearer)
    assert named.headers["ratelimit"] == '"named budget";r=2;t=4'
