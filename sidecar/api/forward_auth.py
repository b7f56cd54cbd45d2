"""The forward-auth listener: authorisation decisions for a front proxy that carries
the traffic itself (nginx ``auth_request``, ingress-nginx ``auth-url``, Traefik
ForwardAuth, Caddy ``forward_auth``, Envoy ``ext_authz``).

Every request here is a decision request about an original request, read from the one
dialect ``forward_auth.dialect`` names and from no other: ``nginx`` (X-Original-Method
+ X-Original-URI or X-Original-URL), ``forwarded`` (X-Forwarded-Method +
X-Forwarded-Uri), ``envoy`` (the decision request's own method and target, minus
``forward_auth.path_prefix``). Trying the dialects in turn would let a client's own
copy of another dialect's header name the request, where the front proxy only
overwrites its own. Without its dialect's headers, or with one of them twice, a
decision request gets 400. The target is read by ``parse_target`` and ``decided_path``,
as the public listener reads its request line: the same parsing, ambiguity refusal and
normalisation. The decision is ``Decider.decide`` (proxy/decision.py), the proxy
path's own. Those headers are believed from any peer: the listener stays private.

Allow: 200, empty body, identity and rate-limit headers, ``Cache-Control: private,
max-age=N`` (N = ``forward_auth.cache_seconds``; 0: ``no-store``). Deny: the proxy
path's 400/401/429/503 (JSON, ``no-store``); 403 for the key endpoints, whatever the
credential. Report-only: 200 without identity, with ``X-CallCov-Auth-Would-Deny``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from sidecar.config.model import ForwardAuthConfig
from sidecar.core.errors import (
    AmbiguousPath,
    DecisionRequestInvalid,
    Forbidden,
    SidecarError,
    rendered,
)
from sidecar.core.paths import PrefixMatcher, decided_path, normalise
from sidecar.core.types import BODY_FOLLOWS, Headers
from sidecar.observability.record import RequestRecord
from sidecar.observability.spans import Tracer
from sidecar.proxy.decision import Decider
from sidecar.proxy.headers import WOULD_DENY, request_id
from sidecar.proxy.target import InvalidTarget, Target, parse_target

log = logging.getLogger("sidecar")

_NO_STORE = (b"cache-control", b"no-store")
_CREDENTIALS = (b"x-api-key", b"authorization")
# Per dialect: the header naming the original method, and those naming its target.
_DIALECTS: dict[str, tuple[bytes, tuple[bytes, ...]]] = {
    "nginx": (b"x-original-method", (b"x-original-uri", b"x-original-url")),
    "forwarded": (b"x-forwarded-method", (b"x-forwarded-uri",)),
    "envoy": (b"", ()),
}
_SPELLING = {
    b"x-original-method": "X-Original-Method", b"x-original-uri": "X-Original-URI",
    b"x-original-url": "X-Original-URL", b"x-forwarded-method": "X-Forwarded-Method",
    b"x-forwarded-uri": "X-Forwarded-Uri",
}  # fmt: skip
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def original_request(
    dialect: str,
    found: dict[bytes, list[bytes]],
    own: tuple[str, bytes],
    path_prefix: bytes | None = None,
) -> tuple[str, Target]:
    """The original request's method and target, read from ``dialect`` only.

    ``found``: the decision request's headers (lower-case names, every value);
    ``own``: its own method and request-target (the ``envoy`` dialect's source).
    Raises DecisionRequestInvalid when the dialect's headers are missing, repeated,
    disagree with each other or name no valid method or target."""
    method_header, target_headers = _DIALECTS[dialect]
    if not method_header:
        return own[0], _parse(_without_prefix(own[1], path_prefix), "the request-target")
    wanted = (method_header, *target_headers)
    for name in wanted:
        if len(found.get(name, ())) > 1:
            raise DecisionRequestInvalid(f"{_SPELLING[name]} sent more than once")
    method = found.get(method_header, [b""])[0]
    named = [(h, found[h][0]) for h in target_headers if h in found]
    if not method or not named:
        spelled = " or ".join(_SPELLING[h] for h in target_headers)
        raise DecisionRequestInvalid(
            f"A decision request needs {_SPELLING[method_header]} and {spelled} "
            f"(forward_auth.dialect: {dialect})"
        )
    if not _TOKEN.fullmatch(method):
        raise DecisionRequestInvalid(f"{_SPELLING[method_header]} is not an HTTP method")
    targets = [_parse(value, _SPELLING[name]) for name, value in named]
    if any(t.raw_path != targets[0].raw_path or t.query != targets[0].query for t in targets):
        raise DecisionRequestInvalid(
            " and ".join(_SPELLING[name] for name, _ in named) + " name different targets"
        )
    return method.decode("ascii").upper(), targets[0]


def _parse(target: bytes, where: str) -> Target:
    try:
        return parse_target(target)
    except InvalidTarget:
        raise DecisionRequestInvalid(f"{where} is not a valid request-target") from None


def _without_prefix(target: bytes, prefix: bytes | None) -> bytes:
    if not prefix:
        return target
    rest = target[len(prefix) :]
    if not target.startswith(prefix) or rest[:1] not in (b"", b"/", b"?"):
        raise DecisionRequestInvalid("The request-target is outside forward_auth.path_prefix")
    return rest if rest.startswith(b"/") else b"/" + rest


class ForwardAuth:
    """The decision listener's ASGI app."""

    def __init__(
        self,
        decider: Decider,
        config: ForwardAuthConfig,
        *,
        owned: PrefixMatcher,
        refuse_ambiguous: bool,
        done: Callable[[RequestRecord], None],
        tracer: Tracer | None = None,
    ) -> None:
        self._decider = decider
        self._tracer = tracer
        self._owned = owned
        self._refuse_ambiguous = refuse_ambiguous
        self._done = done
        self._dialect = config.dialect
        method_header, target_headers = _DIALECTS[config.dialect]
        self._read = frozenset({*_CREDENTIALS, b"x-request-id", method_header, *target_headers})
        prefix = config.path_prefix.rstrip("/") if config.path_prefix else ""
        self._prefix = prefix.encode() or None
        seconds = config.cache_seconds
        self._allow_cache = (
            (b"cache-control", b"private, max-age=%d" % seconds) if seconds else _NO_STORE
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})
        if scope["type"] != "http":
            return
        found: dict[bytes, list[bytes]] = {}
        read = self._read
        for name, value in scope["headers"]:
            lowered = name.lower()
            if lowered in read:
                found.setdefault(lowered, []).append(value)
        rid = request_id(found[b"x-request-id"][0] if b"x-request-id" in found else None)
        client = scope.get("client")
        record = RequestRecord(
            method=scope["method"],
            path=normalise(scope["path"]),
            route="forward_auth",
            request_id=rid.decode(),
            client=client[0] if client else None,
            started=time.perf_counter(),
        )
        if self._tracer is not None:
            record.trace, _ = self._tracer.server(  # no upstream request to carry a context
                scope["headers"], record, scope.get("server"), scope["http_version"]
            )
        headers: Headers = [(b"x-request-id", rid), (b"content-length", b"0")]
        body = b""
        try:
            query = scope["query_string"]
            own = (scope["raw_path"] or b"/") + (b"?" + query if query else b"")
            method, target = original_request(
                self._dialect, found, (scope["method"], own), self._prefix
            )
            normalised, refused = decided_path(
                target.raw_path, target.path, refuse_ambiguous=self._refuse_ambiguous
            )
            record.method, record.path = method, normalised
            if refused:
                raise AmbiguousPath()
            if self._owned.matches(normalised):
                raise Forbidden()
            api_keys, authorizations = found.get(b"x-api-key", ()), found.get(b"authorization", ())
            decision = await self._decider.decide(
                method,
                normalised,
                api_key=api_keys[0] if api_keys else None,
                authorization=authorizations[0] if authorizations else None,
                ambiguous=len(api_keys) > 1 or len(authorizations) > 1,
                record=record,
                headers=scope["headers"],
            )
            status = 200
            if decision.identity is not None:
                headers += self._decider.identity_headers(decision.identity, method, normalised)
            headers += decision.rate_headers
            if decision.would_deny is None:
                headers.append(self._allow_cache)
            else:
                headers += [(WOULD_DENY, b"%d" % decision.would_deny), _NO_STORE]
        except SidecarError as exc:
            status, headers, body = rendered(exc, rid)
            headers.append(_NO_STORE)
        except Exception:
            log.exception("unhandled error deciding on %s %s", record.method, record.path)
            status, headers, body = rendered(SidecarError(), rid)
            headers.append(_NO_STORE)
        record.status = status
        try:
            # BODY_FOLLOWS: the protocol writes the head with the body, in one piece.
            start = {"type": "http.response.start", "status": status, "headers": headers}
            start[BODY_FOLLOWS] = 1
            await send(start)
            await send({"type": "http.response.body", "body": body})
            record.responded = True
        finally:
            record.duration = time.perf_counter() - record.started
            self._done(record)
