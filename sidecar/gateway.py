"""Every request the sidecar does not own: authenticate, rate-limit, forward.

Raw ASGI (no Starlette response machinery) because this is the hot path.
"""

from __future__ import annotations

import time

from starlette.types import Receive, Scope, Send

from sidecar.authn import JWT, Authenticator, Identity, credential_from
from sidecar.domain import key_prefix
from sidecar.errors import NotAuthenticated, StoreUnavailable
from sidecar.headers import HeaderRules, Headers
from sidecar.keyformat import looks_like_api_key
from sidecar.observe import RequestRecord
from sidecar.paths import PrefixMatcher, upstream_path
from sidecar.proxy import Exchange, UpstreamClient
from sidecar.ratelimit import RateLimiter


class Gateway:
    def __init__(
        self,
        *,
        rules: HeaderRules,
        public_paths: PrefixMatcher,
        authenticator: Authenticator,
        limiter: RateLimiter,
        upstream: UpstreamClient,
    ) -> None:
        self._rules = rules
        self._public = public_paths
        self._auth = authenticator
        self._limiter = limiter
        self._upstream = upstream

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        normalised: str,
        request_id: bytes,
        record: RequestRecord,
    ) -> None:
        incoming: Headers = scope["headers"]
        api_key = authorization = None
        ambiguous = False  # a credential header sent twice: which one would the upstream use?
        content_length: int | None = None
        chunked = False
        for name, value in incoming:
            lowered = name.lower()
            if lowered == b"x-api-key":
                ambiguous |= api_key is not None
                api_key = value
            elif lowered == b"authorization":
                ambiguous |= authorization is not None
                authorization = value
            elif lowered == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif lowered == b"transfer-encoding":
                chunked = True
        method: str = scope["method"]
        response_headers: Headers = [(b"x-request-id", request_id)]
        identity: Identity | None = None
        if self._public.matches(normalised):
            record.route = "public"
        else:
            if ambiguous:
                record.auth_outcome = "ambiguous"
                raise NotAuthenticated("ambiguous")
            identity = await self._authenticate(api_key, authorization, record)
            response_headers += await self._limiter.admit(identity.user_id, method, normalised)
        outgoing = self._rules.upstream_request(
            incoming,
            forward_authorization=not ambiguous
            and _may_forward(authorization)
            and (identity is None or identity.method == JWT),
            client=record.client,
            scheme=scope.get("scheme", "http"),
            request_id=request_id,
        )
        if identity is not None:
            outgoing.append((self._rules.user_id, identity.user_id.encode()))
            outgoing.append((self._rules.auth_method, identity.method.encode()))
            if identity.key_id is not None:
                outgoing.append((self._rules.key_id, identity.key_id.encode()))
        exchange = Exchange(response_headers)
        try:
            await self._upstream.forward(
                method=method,
                path=upstream_path(scope["raw_path"] or b"/", scope["path"], normalised),
                query=scope["query_string"],
                headers=outgoing,
                content_length=content_length,
                chunked=chunked,
                receive=receive,
                send=send,
                exchange=exchange,
            )
        finally:
            record.status = exchange.status
            record.responded = exchange.started
            record.bytes_in = exchange.bytes_in
            record.bytes_out = exchange.bytes_out
            record.upstream_seconds = exchange.upstream_seconds

    async def _authenticate(
        self, api_key: bytes | None, authorization: bytes | None, record: RequestRecord
    ) -> Identity:
        started = time.perf_counter()
        credential = None
        try:
            credential = credential_from(api_key, authorization)
            record.auth_method = credential.kind
            identity = await self._auth.authenticate(credential)
        except NotAuthenticated as exc:
            record.auth_outcome = exc.reason
            if credential is not None and exc.reason in _WELL_FORMED_KEY_REJECTED:
                record.key_prefix = key_prefix(credential.value)  # public; tells ops which key
            raise
        except StoreUnavailable:
            record.auth_outcome = "store_unavailable"
            raise
        finally:
            record.auth_seconds = time.perf_counter() - started
        record.auth_outcome = "ok"
        record.user_id = identity.user_id
        record.key_prefix = identity.key_prefix
        return identity


_WELL_FORMED_KEY_REJECTED = frozenset({"unknown", "revoked", "expired"})


def _may_forward(authorization: bytes | None) -> bool:
    """Whether an Authorization header can go upstream: never one carrying an API key,
    however it is spaced (``Bearer<TAB>sk_...`` is rejected as a credential, but must
    not leak through a public path either)."""
    if authorization is None:
        return False
    return not any(looks_like_api_key(part.decode("latin-1")) for part in authorization.split())
