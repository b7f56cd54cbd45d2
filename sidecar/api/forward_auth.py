"""The forward-auth listener: authorisation decisions for a front proxy that carries
the traffic itself (nginx ``auth_request``, ingress-nginx ``auth-url``, Traefik
ForwardAuth, Caddy ``forward_auth``, Envoy ``ext_authz``).

Every request here is a decision request about an original request, found in order:
``X-Original-Method`` + ``X-Original-URI`` / ``X-Original-URL`` (nginx, ingress-nginx),
``X-Forwarded-Method`` + ``X-Forwarded-Uri`` (Traefik, Caddy), else the decision
request's own method and path minus ``forward_auth.path_prefix`` (Envoy). The decision
is ``Decider.decide`` (proxy/decision.py), the proxy path's own. Those headers are
believed from any peer, which is why the listener must stay private.

Allow: 200, empty body, identity and rate-limit headers, ``Cache-Control: private,
max-age=N`` (N = ``forward_auth.cache_seconds``; 0: ``no-store``). Deny: the proxy
path's 401/429/503 (JSON, ``no-store``); 403 for the key endpoints, whatever the
credential. Report-only: 200 without identity, with ``X-CallCov-Auth-Would-Deny``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from starlette.types import Receive, Scope, Send

from sidecar.config.model import ForwardAuthConfig
from sidecar.core.errors import Forbidden, SidecarError, rendered
from sidecar.core.paths import PrefixMatcher, normalise
from sidecar.core.types import Headers
from sidecar.observability.record import RequestRecord
from sidecar.proxy.decision import Decider
from sidecar.proxy.headers import WOULD_DENY, request_id

log = logging.getLogger("sidecar")

_NO_STORE = (b"cache-control", b"no-store")
_DIALECT = frozenset(
    {
        b"x-api-key", b"authorization", b"x-request-id", b"x-original-method",
        b"x-original-uri", b"x-original-url", b"x-forwarded-method", b"x-forwarded-uri",
    }
)  # fmt: skip


def original_request(
    own_method: str, own_path: str, found: dict[bytes, bytes], path_prefix: str | None
) -> tuple[str, str]:
    """The original request's method and percent-decoded path (no query), by dialect."""
    for method_header, target_headers in (
        (b"x-original-method", (b"x-original-uri", b"x-original-url")),
        (b"x-forwarded-method", (b"x-forwarded-uri",)),
    ):
        target = next((found[h] for h in target_headers if h in found), None)
        if target is not None:
            method = found.get(method_header, own_method.encode()).decode("latin-1").upper()
            path = urlsplit(target.decode("latin-1")).path or "/"
            return method, unquote(path)
    if path_prefix and (own_path == path_prefix or own_path.startswith(path_prefix + "/")):
        own_path = own_path[len(path_prefix) :] or "/"
    return own_method, own_path


class ForwardAuth:
    """The decision listener's ASGI app."""

    def __init__(
        self,
        decider: Decider,
        config: ForwardAuthConfig,
        *,
        owned: PrefixMatcher,
        done: Callable[[RequestRecord], None],
    ) -> None:
        self._decider = decider
        self._owned = owned
        self._done = done
        self._prefix = config.path_prefix.rstrip("/") if config.path_prefix else None
        seconds = config.cache_seconds
        self._allow_cache = (
            (b"cache-control", b"private, max-age=%d" % seconds) if seconds else _NO_STORE
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})
        if scope["type"] != "http":
            return
        found: dict[bytes, bytes] = {}
        ambiguous = False
        for name, value in scope["headers"]:
            lowered = name.lower()
            if lowered in _DIALECT:
                ambiguous |= lowered in found and lowered in (b"x-api-key", b"authorization")
                found[lowered] = value
        method, path = original_request(scope["method"], scope["path"], found, self._prefix)
        normalised = normalise(path)
        rid = request_id(found.get(b"x-request-id"))
        client = scope.get("client")
        record = RequestRecord(
            method=method,
            path=normalised,
            route="forward_auth",
            request_id=rid.decode(),
            client=client[0] if client else None,
            started=time.perf_counter(),
        )
        headers: Headers = [(b"x-request-id", rid), (b"content-length", b"0")]
        body = b""
        try:
            if self._owned.matches(normalised):
                raise Forbidden()
            decision = await self._decider.decide(
                method,
                normalised,
                api_key=found.get(b"x-api-key"),
                authorization=found.get(b"authorization"),
                ambiguous=ambiguous,
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
            log.exception("unhandled error deciding on %s %s", method, normalised)
            status, headers, body = rendered(SidecarError(), rid)
            headers.append(_NO_STORE)
        record.status = status
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            record.responded = True
        finally:
            record.duration = time.perf_counter() - record.started
            self._done(record)
