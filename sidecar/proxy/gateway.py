"""Every request the sidecar does not own: decide (decision.py), then forward: the
upstream request planned while Redis answers the rate-limit check, the WebSocket
hand-over, the streamed exchange.

Raw ASGI (no Starlette response machinery) because this is the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from sidecar.auth.credentials import JWT, Authenticator, Identity, credential_from
from sidecar.core.domain import TEST
from sidecar.core.errors import (
    NotAuthenticated,
    SidecarError,
    UnsupportedCoding,
    UpgradeNotGet,
)
from sidecar.core.paths import upstream_path
from sidecar.core.types import TAKE_OVER, Headers
from sidecar.keys.format import looks_like_api_key
from sidecar.observability.record import RequestRecord
from sidecar.observability.spans import WEBSOCKET_CUT_OFF, RequestTrace
from sidecar.proxy.decision import Decider, Decision, Early
from sidecar.proxy.headers import WOULD_DENY, HeaderRules
from sidecar.proxy.upstream import Exchange, UpstreamClient
from sidecar.proxy.websocket import WebSockets, wants_websocket
from sidecar.proxy.websocket_frames import POLICY_VIOLATION
from sidecar.ratelimit.limiter import RateLimiter

# Where ``start`` leaves a request for ``handle``, in its ASGI scope.
_FORWARDING = "sidecar.forwarding"


class Gateway:
    """Forwards what the decider admits."""

    def __init__(
        self,
        *,
        decider: Decider,
        rules: HeaderRules,
        authenticator: Authenticator,
        limiter: RateLimiter,
        upstream: UpstreamClient,
        test_upstream: UpstreamClient | None = None,
        websockets: WebSockets | None = None,
    ) -> None:
        self._decider = decider
        self._rules = rules
        self._auth = authenticator
        self._limiter = limiter
        self._upstream = upstream
        self._test_upstream = test_upstream  # for test keys, when they have their own
        self._websockets = websockets

    def start(self, scope: Scope, normalised: str) -> None:
        """Begin a request ``handle`` will be given, as soon as its head is parsed: read
        its headers and, when the key cache vouches for its API key, send its rate-limit
        check to Redis, which answers while the server and ``handle`` set the request
        up (docs/design-notes.md: the rate-limit check at the head)."""
        try:
            request = _Forwarding(self, scope, normalised)
        except SidecarError:
            return  # ``handle`` refuses it, in order
        scope[_FORWARDING] = request
        if request.ambiguous or self._decider.public.matches(normalised):
            return
        try:
            credential = credential_from(request.api_key, request.authorization)
        except NotAuthenticated:
            return
        vouched = self._auth.vouched(credential)
        if vouched is not None:
            key, key_hash = vouched
            if (key.scopes is not None or key.networks is not None) and not (
                self._decider.permits(
                    key.scopes,
                    key.networks,
                    request.method,
                    normalised,
                    request.client,
                    request.incoming,
                )
            ):
                return  # refused with 403 by ``handle``, and not charged
            sent = self._limiter.send(key.user_id, request.method, normalised)
            request.early = Early(credential, key_hash, sent, (key.scopes, key.networks))

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
        request.trace_context = record.trace_context
        decision = await self._decider.decide(
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
        trace = record.trace
        if request.websocket and self._websockets is not None:
            identity = decision.identity
            headers = plan.headers
            closed_by_us = None
            if trace is not None:  # the handshake's span lasts as long as the socket
                trace.allowed = True
                hop = trace.upstream("GET", *plan.upstream.address)
                headers = [*headers, *hop.headers()]
                closed_by_us = _cut_off_event(trace)
            record.status = await self._websockets.relay(
                upstream=plan.upstream,
                take_over=scope["extensions"][TAKE_OVER],
                send=send,
                path=request.path,
                query=request.query,
                headers=headers,
                response_headers=response_headers,
                identity=identity,
                credential=None
                if identity is None
                else credential_from(request.api_key, request.authorization),
                admits=lambda changed: self._decider.permits(
                    changed.scopes,
                    changed.networks,
                    request.method,
                    request.normalised,
                    request.client,
                    request.incoming,
                ),
                closed_by_us=closed_by_us,
            )
            record.responded = True
            if trace is not None:
                hop.end(record.status)
            return
        exchange = Exchange(response_headers)
        head = plan.head
        if trace is not None:  # a client span, named in the upstream's traceparent
            trace.allowed = True
            hop = trace.upstream(request.method, *plan.upstream.address)
            head = with_headers(head, hop.headers())
        try:
            await plan.upstream.forward(
                method=request.method,
                head=head,
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
            if trace is not None:
                hop.end(exchange.status)

    def _plan_upstream(
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
            headers += self._decider.identity_headers(identity, request.method, request.normalised)
            if self._test_upstream is not None and identity.environment == TEST:
                upstream = self._test_upstream
        elif would_deny is not None:
            headers.append((WOULD_DENY, b"%d" % would_deny))
        if request.trace_context is not None:  # tracing on, the request not sampled
            headers += request.trace_context
        head = upstream.request_head(
            request.method,
            request.path,
            request.query,
            headers,
            request.content_length,
            request.chunked,
        )
        return _Plan(identity, upstream, headers, head)


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
        "trace_context",
        "websocket",
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
        self.trace_context: Headers | None = None  # set by ``handle``
        client = scope.get("client")
        self.client: str | None = client[0] if client else None
        self.early: Early | None = None  # set by ``start``
        # A WebSocket handshake, which the connection is handed over for. Only GET (RFC
        # 6455 §4.1): the method charged, signed into the assertion (``htm``) and sent
        # upstream is then the one the client used. Refused before the decision.
        extensions = scope.get("extensions")
        self.websocket: bool = (
            extensions is not None and TAKE_OVER in extensions and wants_websocket(incoming)
        )
        if self.websocket and self.method != "GET":
            raise UpgradeNotGet()

    def prepare(self, identity: Identity) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs more, on the hot path)
            self._prepared = self._gateway._plan_upstream(self, identity, None)
        except ValueError:
            pass  # a header that would smuggle a line break: ``plan`` raises it again

    def plan(self, decision: Decision) -> _Plan:
        prepared = self._prepared
        if prepared is not None and prepared.identity is decision.identity:
            return prepared
        return self._gateway._plan_upstream(self, decision.identity, decision.would_deny)


def _cut_off_event(trace: RequestTrace) -> Callable[[int], None]:
    """What a traced WebSocket's span records when the sidecar closes the socket: 1008,
    its credential was revoked or expired (or lost the scope); 1001, shutdown."""

    def cut_off(code: int) -> None:
        reason = "credential_invalid" if code == POLICY_VIOLATION else "shutdown"
        trace.event(
            WEBSOCKET_CUT_OFF,
            {"callcov.websocket.close_code": code, "callcov.websocket.reason": reason},
        )

    return cut_off


def with_headers(head: bytes, extra: Headers) -> bytes:
    """A request ``head`` with ``extra`` headers after its request line."""
    line_end = head.index(b"\r\n") + 2
    added = b"".join(name + b": " + value + b"\r\n" for name, value in extra)
    return head[:line_end] + added + head[line_end:]


def _may_forward(authorization: bytes | None) -> bool:
    """Whether an Authorization header can go upstream: never one carrying an API key,
    however it is spaced (``Bearer<TAB>sk_...`` is rejected as a credential, but must
    not leak through a public path either)."""
    if authorization is None:
        return False
    return not any(looks_like_api_key(part.decode("latin-1")) for part in authorization.split())
