"""Rate-limit rules compiled from config: which rule a request falls under, the
Redis key of its bucket, and the response headers it produces.

Redis keys: ``callcov:rl:{<user id>}:<rule>``; the hash tag is the user id (with
``%``, ``{`` and ``}`` percent-escaped so any id yields a well-formed, distinct
tag), so on Redis Cluster a user's buckets share a slot and users spread across
the cluster. ``<rule>`` is ``default`` or ``<METHOD or *>:<path prefix>``, stable
when rules are reordered.

Headers (on every proxied response of an authenticated user):
``X-RateLimit-Limit`` = N of the matching rule; ``X-RateLimit-Remaining`` =
requests that could be made right now; ``X-RateLimit-Reset`` = whole seconds
(rounded up) until the budget is full again — a delta, not an epoch, as in the
IETF RateLimit-header draft and Envoy, in the same unit as ``Retry-After`` and
immune to clock skew between client and server. A 429 adds ``Retry-After``:
whole seconds (>= 1) until one more request would be admitted.

``rate_limits.headers: ietf`` sends draft-ietf-httpapi-ratelimit-headers-10's
structured fields (RFC 9651) instead, ``both`` sends both sets:
``RateLimit-Policy: "<policy>";q=<N>;w=<P>`` and ``RateLimit: "<policy>";r=<remaining>;t=<reset>``
with the same numbers; ``<policy>`` is ``default``, or the rule's ``name``, else
``"<METHOD or *> <path>"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sidecar.config.model import RateLimit, RateLimitsConfig
from sidecar.core.paths import PrefixMatcher
from sidecar.core.types import Headers

NAMESPACE = "callcov:rl"
MICROS = 1_000_000

LIMIT = b"x-ratelimit-limit"
REMAINING = b"x-ratelimit-remaining"
RESET = b"x-ratelimit-reset"
POLICY = b"ratelimit-policy"
RATELIMIT = b"ratelimit"


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled limit: N requests per P seconds, as GCRA parameters, and its headers."""

    name: str  # key suffix: "default" or "<METHOD or *>:<path>"
    requests: int
    interval_us: int  # P/N, at least 1 µs
    fixed_headers: Headers  # the same on every response: the limit / the policy
    x_ratelimit: bool
    ietf_policy: bytes | None  # the sf-string naming the policy, when IETF headers are on

    @property
    def capacity_us(self) -> int:
        return self.requests * self.interval_us

    @classmethod
    def compile(cls, name: str, limit: RateLimit, policy: str, style: str = "x-ratelimit") -> Rule:
        interval = max(1, round(limit.per_seconds * MICROS / limit.requests))
        x_ratelimit = style in ("x-ratelimit", "both")
        quoted = sf_string(policy) if style in ("ietf", "both") else None
        fixed: Headers = []
        if x_ratelimit:
            fixed.append((LIMIT, str(limit.requests).encode()))
        if quoted is not None:
            window = max(1, math.ceil(limit.per_seconds))
            fixed.append((POLICY, b"%s;q=%d;w=%d" % (quoted, limit.requests, window)))
        return cls(name, limit.requests, interval, fixed, x_ratelimit, quoted)

    def headers(self, remaining: int, reset: int) -> Headers:
        out = list(self.fixed_headers)
        if self.x_ratelimit:
            out += [(REMAINING, str(remaining).encode()), (RESET, str(reset).encode())]
        if self.ietf_policy is not None:
            out.append((RATELIMIT, b"%s;r=%d;t=%d" % (self.ietf_policy, remaining, reset)))
        return out


def sf_string(text: str) -> bytes:
    """An RFC 9651 sf-string: printable ASCII in quotes, ``\\`` and ``"`` escaped; any
    other character (possible in a rule's path) becomes ``?``."""
    escaped = "".join("\\" + c if c in '\\"' else c if " " <= c <= "~" else "?" for c in text)
    return b'"%s"' % escaped.encode("ascii")


class RuleTable:
    """Ordered rules matched on method and normalised path prefix (PrefixMatcher
    semantics); the first match wins, else the default. One matcher per method
    named in the rules, plus one for every other method, built once."""

    def __init__(self, config: RateLimitsConfig) -> None:
        style = config.headers
        self.default = Rule.compile("default", config.default, "default", style)
        rules = [
            Rule.compile(
                f"{r.method or '*'}:{r.path.lower().rstrip('/') or '/'}",
                r,
                r.name or f"{r.method or '*'} {r.path}",
                style,
            )
            for r in config.rules
        ]
        methods = {r.method for r in config.rules if r.method is not None}

        def table(method: str | None) -> tuple[PrefixMatcher, tuple[Rule, ...]]:
            picked = [
                (spec.path, rule)
                for spec, rule in zip(config.rules, rules, strict=True)
                if spec.method is None or spec.method == method
            ]
            return PrefixMatcher(tuple(p for p, _ in picked)), tuple(r for _, r in picked)

        self._by_method = {m: table(m) for m in methods}
        self._any_method = table(None)

    def match(self, method: str, normalised: str) -> Rule:
        matcher, rules = self._by_method.get(method, self._any_method)
        index = matcher.match(normalised)
        return self.default if index is None else rules[index]


def bucket_key(user_id: str, rule: Rule) -> str:
    if "{" in user_id or "}" in user_id or "%" in user_id:
        user_id = user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{NAMESPACE}:{{{user_id}}}:{rule.name}"
