"""Every request the sidecar does not own: decide, then forward.

``Gateway.decide`` is the one authorisation decision — public path, credential,
authentication, rate limit, report-only mode — used by the proxy path here, by the
forward-auth listener (forward_auth.py) and by anything else that admits a request.
In enforce mode it raises the SidecarError the client gets; in report-only mode a
401, 429 or 503 becomes a Decision with ``would_deny`` set and no identity.

Raw ASGI (no Starlette response machinery) because this is the hot path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from sidecar.auth.assertion import AssertionSigner
from sidecar.auth.credentials import JWT, Authenticator, Credential, Identity, credential_from
from sidecar.core.domain import LIVE, TEST, key_prefix
from sidecar.core.errors import (
    NotAuthenticated,
    RateLimited,
    SidecarError,
    StoreUnavailable,
    TooManyFailedAuth,
    UnsupportedCoding,
)
from sidecar.core.paths import PrefixMatcher, upstream_path
from sidecar.core.types import TAKE_OVER, Headers
from sidecar.keys.format import looks_like_api_key
from sidecar.observability.record import RequestRecord
from sidecar.proxy.headers import WOULD_DENY, HeaderRules
from sidecar.proxy.upstream import Exchange, UpstreamClient
from sidecar.proxy.websocket import WebSockets, wants_websocket
from sidecar.ratelimit.limiter import RateLimiter, Sent

# The refusals report-only mode turns into "forwarded, marked": 401, 429, and 503 for a
# key that cannot be verified. Anything else (413, 502...) is not an auth decision.
REPORTABLE = frozenset({401, 429, 503})
# Where ``start`` leaves a request for ``handle``, in its ASGI scope.
_FORWARDING = "sidecar.forwarding"


class Decision(NamedTuple):
    identity: Identity | None  # None: a public path, or a report-only would-be refusal
    rate_headers: Headers  # for the client's response
    would_deny: int | None = None  # report-only: the status enforce mode would answer
    public: bool = False


class Early(NamedTuple):
    """What ``Gateway.start`` learnt at a request's head: its credential, which the key
    cache vouched for, the key's hash, and the rate-limit check it sent."""

    credential: Credential
    key_hash: str
    sent: Sent | None


_PUBLIC = Decision(None, [], None, True)
log = logging.getLogger("sidecar.auth")


class Gateway:
    def __init__(
        self,
        *,
        rules: HeaderRules,
        public_paths: PrefixMatcher,
        authenticator: Authenticator,
        limiter: RateLimiter,
        upstream: UpstreamClient,
        report_only: PrefixMatcher | None = None,
        assertion: AssertionSigner | None = None,
        test_upstream: UpstreamClient | None = None,
        websockets: WebSockets | None = None,
    ) -> None:
        self._rules = rules
        self._public = public_paths
        self._auth = authenticator
        self._limiter = limiter
        self._upstream = upstream
        self._test_upstream = test_upstream  # for test keys, when they have their own
        self._report_only = report_only
        self._assertion = assertion
        self._websockets = websockets

    async def decide(
        self,
        method: str,
        normalised: str,
        *,
        api_key: bytes | None,
        authorization: bytes | None,
        ambiguous: bool,
        record: RequestRecord,
        headers: Sequence[tuple[bytes, bytes]] = (),
        meanwhile: Callable[[Identity], None] | None = None,
        early: Early | None = None,
    ) -> Decision:
        """Admit or refuse ``method normalised`` with this credential; charges the rate
        limit. Raises NotAuthenticated, RateLimited, TooManyFailedAuth or StoreUnavailable
        to refuse. ``headers`` (the request's) tell who the client is behind a trusted
        proxy, for the failed-auth limit. ``meanwhile(identity)`` runs once the
        credential is verified, while Redis answers the rate-limit check (it must not
        raise). ``early``: what ``start`` learnt and sent, if it ran."""
        if early is None and self._public.matches(normalised):  # ``start`` checked it
            return _PUBLIC
        try:
            if ambiguous:  # a credential header sent twice: which one would the upstream use?
                record.auth_outcome = "ambiguous"
                raise NotAuthenticated("ambiguous")
            sent = early.sent if early is not None else None
            try:
                identity = await self._authenticate(api_key, authorization, headers, record, early)
            except BaseException:
                if sent is not None:
                    sent.drop()
                raise
            check = self._limiter.check(identity.user_id, method, normalised, sent)
            if meanwhile is not None:
                meanwhile(identity)  # README "Design notes": the rate-limit round trip
            try:
                rate_headers = await check
            except RateLimited:
                self._auth.rate_limited(identity)
                raise
        except SidecarError as exc:
            if (
                self._report_only is None
                or exc.status not in REPORTABLE
                or not self._report_only.matches(normalised)
            ):
                raise
            record.would_deny = exc.status
            rate_headers = exc.rate_headers if isinstance(exc, RateLimited) else []
            return Decision(None, rate_headers, exc.status)
        return Decision(identity, rate_headers)

    def identity_headers(self, identity: Identity, method: str, normalised: str) -> Headers:
        """The request headers that tell the upstream who is calling (and, signed, for
        which route)."""
        rules = self._rules
        out = [
            (rules.user_id, identity.user_id.encode()),
            (rules.auth_method, identity.method.encode()),
        ]
        if identity.key_id is not None:
            out.append((rules.key_id, identity.key_id.encode()))
            out.append((rules.environment, _ENVIRONMENT[identity.environment]))
        if self._assertion is not None:
            out.append((self._assertion.header, self._assertion.sign(identity, method, normalised)))
        return out

    def start(self, scope: Scope, normalised: str) -> None:
        """Begin a request ``handle`` will be given, as soon as its head is parsed: read
        its headers and, when the key cache vouches for its API key, send its rate-limit
        check to Redis, which answers while the server and ``handle`` set the request
        up (README "Design notes": the rate-limit check at the head)."""
        try:
            request = _Forwarding(self, scope, normalised)
        except SidecarError:
            return  # ``handle`` refuses it, in order
        scope[_FORWARDING] = request
        if request.ambiguous or self._public.matches(normalised):
            return
        try:
            credential = credential_from(request.api_key, request.authorization)
        except NotAuthenticated:
            return
        vouched = self._auth.vouched(credential)
        if vouched is not None:
            user_id, key_hash = vouched
            sent = self._limiter.send(user_id, request.method, normalised)
            request.early = Early(credential, key_hash, sent)

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
        request: _Forwarding = scope.pop(_FORWARDING, None) or _Forwarding(self, scope, normalised)
        request.request_id = request_id
        decision = await self.decide(
            request.method,
            normalised,
            api_key=request.api_key,
            authorization=request.authorization,
            ambiguous=request.ambiguous,
            record=record,
            headers=request.incoming,
            meanwhile=request.prepare,
            early=request.early,
        )
        if decision.public:
            record.route = "public"
        plan = request.plan(decision)
        response_headers: Headers = [(b"x-request-id", request_id), *decision.rate_headers]
        extensions = scope.get("extensions")
        if extensions and self._websockets is not None and wants_websocket(request.incoming):
            take_over = extensions.get(TAKE_OVER)
            if take_over is not None:
                identity = decision.identity
                record.status = await self._websockets.relay(
                    upstream=plan.upstream,
                    take_over=take_over,
                    send=send,
                    path=request.path,
                    query=request.query,
                    headers=plan.headers,
                    response_headers=response_headers,
                    identity=identity,
                    credential=None
                    if identity is None
                    else credential_from(request.api_key, request.authorization),
                )
                record.responded = True
                return
        exchange = Exchange(response_headers)
        try:
            await plan.upstream.forward(
                method=request.method,
                head=plan.head,
                headers=plan.headers,
                content_length=request.content_length,
                chunked=request.chunked,
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

    def plan_upstream(
        self, request: _Forwarding, identity: Identity | None, would_deny: int | None
    ) -> _Plan:
        """What goes upstream for ``request`` once ``identity`` is decided (None: a public
        path, or a report-only would-be refusal with the status ``would_deny``)."""
        authorization = request.authorization
        headers = self._rules.upstream_request(
            request.incoming,
            forward_authorization=not request.ambiguous
            and _may_forward(authorization)
            and (identity is None or identity.method == JWT),
            client=request.client,
            scheme=request.scheme,
            request_id=request.request_id,
        )
        upstream = self._upstream
        if identity is not None:
            headers += self.identity_headers(identity, request.method, request.normalised)
            if self._test_upstream is not None and identity.environment == TEST:
                upstream = self._test_upstream
        elif would_deny is not None:
            headers.append((WOULD_DENY, b"%d" % would_deny))
        head = upstream.request_head(
            request.method,
            request.path,
            request.query,
            headers,
            request.content_length,
            request.chunked,
        )
        return _Plan(identity, upstream, headers, head)

    async def _authenticate(
        self,
        api_key: bytes | None,
        authorization: bytes | None,
        incoming: Sequence[tuple[bytes, bytes]],
        record: RequestRecord,
        early: Early | None = None,
    ) -> Identity:
        started = time.perf_counter()
        credential = None
        try:
            if early is None:
                credential = credential_from(api_key, authorization)
                key_hash = None
            else:
                credential, key_hash = early.credential, early.key_hash
            record.auth_method = credential.kind
            identity = await self._auth.authenticate(
                credential, peer=record.client, headers=incoming, key_hash=key_hash
            )
        except NotAuthenticated as exc:
            record.auth_outcome = exc.reason
            if credential is not None and exc.reason in _WELL_FORMED_KEY_REJECTED:
                record.key_prefix = key_prefix(credential.value)  # public; tells ops which key
                if exc.reason == "canary":
                    client = self._rules.proxies.client(record.client, incoming)
                    _report_canary(record, client)
            raise
        except StoreUnavailable:
            record.auth_outcome = "store_unavailable"
            raise
        except TooManyFailedAuth:
            record.auth_outcome = "failed_auth_limited"
            raise
        finally:
            record.auth_seconds = time.perf_counter() - started
        record.auth_outcome = "ok"
        record.user_id = identity.user_id
        record.key_prefix = identity.key_prefix
        return identity


class _Plan(NamedTuple):
    """One request as it goes upstream, for one decided identity."""

    identity: Identity | None
    upstream: UpstreamClient
    headers: Headers
    head: bytes  # request line and headers, without the body


class _Forwarding:
    """One request on its way upstream: what the client sent, and the plan for sending
    it on. ``prepare`` makes the plan while Redis answers the rate-limit check; ``plan``
    reuses it when the decision admitted that identity (in report-only mode a refusal
    becomes a plan without identity, made then)."""

    __slots__ = (
        "_gateway",
        "_prepared",
        "ambiguous",
        "api_key",
        "authorization",
        "chunked",
        "client",
        "content_length",
        "early",
        "incoming",
        "method",
        "normalised",
        "path",
        "query",
        "request_id",
        "scheme",
    )

    def __init__(self, gateway: Gateway, scope: Scope, normalised: str) -> None:
        incoming: Headers = scope["headers"]
        api_key = authorization = None
        ambiguous = False
        content_length: int | None = None
        chunked = False
        for name, value in incoming:  # names are lower case in an ASGI scope
            if name == b"x-api-key":
                ambiguous |= api_key is not None
                api_key = value
            elif name == b"authorization":
                ambiguous |= authorization is not None
                authorization = value
            elif name == b"content-length":
                content_length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":  # as nginx: no other coding
                    raise UnsupportedCoding()
                chunked = True
        self._gateway = gateway
        self._prepared: _Plan | None = None
        self.incoming = incoming
        self.api_key = api_key
        self.authorization = authorization
        self.ambiguous = ambiguous
        self.content_length = content_length
        self.chunked = chunked
        self.method: str = scope["method"]
        self.normalised = normalised
        self.path = upstream_path(scope["raw_path"] or b"/", scope["path"], normalised)
        self.query: bytes = scope["query_string"]
        self.scheme: str = scope.get("scheme", "http")
        self.request_id = b""  # set by ``handle``
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.early: Early | None = None  # set by ``start``

    def prepare(self, identity: Identity) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs more, on the hot path)
            self._prepared = self._gateway.plan_upstream(self, identity, None)
        except ValueError:
            pass  # a header that would smuggle a line break: ``plan`` raises it again

    def plan(self, decision: Decision) -> _Plan:
        prepared = self._prepared
        if prepared is not None and prepared.identity is decision.identity:
            return prepared
        return self._gateway.plan_upstream(self, decision.identity, decision.would_deny)


_ENVIRONMENT = {LIVE: b"live", TEST: b"test", None: b"live"}
_WELL_FORMED_KEY_REJECTED = frozenset({"unknown", "revoked", "expired", "canary"})


def _report_canary(record: RequestRecord, client: str | None) -> None:
    context = {
        "key_prefix": record.key_prefix,
        "client": client,
        "peer": record.client,
        "method": record.method,
        "path": record.path,
        "request_id": record.request_id,
    }
    log.warning("canary key used", extra={"context": context})


def _may_forward(authorization: bytes | None) -> bool:
    """Whether an Authorization header can go upstream: never one carrying an API key,
    however it is spaced (``Bearer<TAB>sk_...`` is rejected as a credential, but must
    not leak through a public path either)."""
    if authorization is None:
        return False
    return not any(looks_like_api_key(part.decode("latin-1")) for part in authorization.split())
