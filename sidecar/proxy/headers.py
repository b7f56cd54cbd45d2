"""Header rules, compiled once from config: what is stripped, what is injected."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable

from sidecar.config.model import Config
from sidecar.core.clientaddr import TrustedProxies
from sidecar.core.types import Headers

# RFC 9110 §7.6.1 connection-specific fields, plus legacy ones proxies must not pass on.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)  # fmt: skip
# X-Real-IP too: upstreams (and nginx's realip module) take it as the client's address.
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# Set by the sidecar only, so always stripped from what a client sends: the report-only
# mark, and the signed identity assertion's default name (even with assertions off).
WOULD_DENY = b"x-callcov-auth-would-deny"
ASSERTION = b"x-callcov-identity"
_RESPONSE_DROPPED = HOP_BY_HOP | {b"date", b"x-request-id"}
_REQUEST_ID_SHAPE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Request ids must be unique, not unguessable: a PRNG seeded from os.urandom per process
# (and again in a forked child) instead of uuid4's getrandom() call per request.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def canonical(name: bytes) -> bytes:
    """Header names that a server might treat as the same: case and ``_`` vs ``-``."""
    return name.lower().replace(b"_", b"-")


def connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(canonical(t.strip()) for t in value.split(b",") if t.strip())
    return frozenset(listed)


def request_id(incoming: bytes | None) -> bytes:
    """The client's X-Request-ID if it is a sane id, else a new one. A value shaped like
    a credential is replaced: it would be echoed back and forwarded upstream."""
    if (
        incoming is not None
        and _REQUEST_ID_SHAPE.fullmatch(incoming)
        and not incoming.startswith((b"sk_", b"eyJ"))
    ):
        return incoming
    return b"%032x" % _ids.getrandbits(128)


_TRACE_CONTEXT = frozenset({b"traceparent", b"tracestate"})


class HeaderRules:
    def __init__(self, config: Config) -> None:
        names = config.identity.headers
        self.user_id = names.user_id.encode().lower()
        self.auth_method = names.auth_method.encode().lower()
        self.key_id = names.key_id.encode().lower()
        self.environment = names.environment.encode().lower()
        self.scopes = names.scopes.encode().lower()
        identity = {
            canonical(n)
            for n in (self.user_id, self.auth_method, self.key_id, self.environment, self.scopes)
        }
        identity |= {WOULD_DENY, ASSERTION, canonical(config.identity.assertion.header.encode())}
        # Expect: 100-continue is answered by our own server when the body is read (as
        # nginx does); passed on, the upstream's 100 would only be dropped.
        self._always_dropped = frozenset(
            HOP_BY_HOP | identity | _FORWARDED | {b"x-api-key", b"host", b"x-request-id", b"expect"}
        )
        if config.tracing.enabled:  # the sidecar's own trace context replaces the client's
            self._always_dropped |= _TRACE_CONTEXT
        self._forward_authorization = config.upstream.forward_authorization
        self.proxies = TrustedProxies(config.server.trusted_proxies)

    def upstream_request(
        self,
        incoming: Headers,
        *,
        forward_authorization: bool,
        client: str | None,
        scheme: str,
        request_id: bytes,
    ) -> Headers:
        """The headers to send upstream: end-to-end ones, then forwarding (X-Forwarded-*,
        X-Real-IP) and request id.

        Identity headers are not added here; the caller appends them once known.
        """
        listed = connection_listed(incoming)
        dropped = self._always_dropped | listed if listed else self._always_dropped
        keep_authorization = forward_authorization and self._forward_authorization
        out: Headers = []
        host = b""
        prior_for: list[bytes] = []
        trusted = self.proxies.is_trusted(client)
        prior_proto = prior_host = None
        for name, value in incoming:
            key = canonical(name)
            if key == b"host":
                host = value
            elif trusted and key == b"x-forwarded-for":
                prior_for.append(value)
            elif trusted and key == b"x-forwarded-proto":
                prior_proto = value
            elif trusted and key == b"x-forwarded-host":
                prior_host = value
            if key in dropped or (key == b"authorization" and not keep_authorization):
                continue
            out.append((name, value))
        peer = client.encode() if client else None
        chain = [*prior_for, peer] if peer else prior_for
        if chain:
            out.append((b"x-forwarded-for", b", ".join(chain)))
        # The client as the sidecar itself resolves it (the failed-auth limit's address):
        # the peer, or behind a trusted proxy the right-most untrusted hop, as nginx's
        # realip module sets it with real_ip_recursive on. Never the client's own copy.
        real_ip = peer
        if trusted:
            behind = self.proxies.behind(client, prior_for)
            real_ip = behind.encode() if behind else None
        if real_ip:
            out.append((b"x-real-ip", real_ip))
        out.append((b"x-forwarded-proto", prior_proto or scheme.encode()))
        if prior_host or host:
            out.append((b"x-forwarded-host", prior_host or host))
        out.append((b"x-request-id", request_id))
        return out

    @staticmethod
    def downstream_response(upstream: Iterable[tuple[bytes, bytes]], ours: Headers) -> Headers:
        """The upstream's end-to-end headers, minus any the sidecar sets itself, then ours.

        ``Date`` is dropped because the sidecar's server adds its own.
        """
        dropped = _RESPONSE_DROPPED
        listed = connection_listed(upstream)
        if listed or len(ours) > 1:  # ours always holds X-Request-ID, already in the set
            dropped = dropped | listed | {name for name, _ in ours}
        out = [(n, v) for n, v in upstream if canonical(n) not in dropped]
        out.extend(ours)
        return out
