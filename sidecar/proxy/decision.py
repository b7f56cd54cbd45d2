"""The one authorisation decision — public path, credential, authentication, a
restricted key's address and scopes, rate limit, report-only mode — used by the proxy
path (gateway.py), the forward-auth listener and the WebSocket handshake alike.

In enforce mode it raises the SidecarError the client gets; in report-only mode a
401, 403, 429 or 503 becomes a Decision with ``would_deny`` set and no identity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sidecar.auth.assertion import AssertionSigner
from sidecar.auth.credentials import (
    Authenticator,
    CanaryUsed,
    Credential,
    Identity,
    credential_from,
)
from sidecar.auth.restrictions import Restrictions, Scopes
from sidecar.core.domain import LIVE, TEST, AllowedNetworks, VerifiedKey, key_prefix
from sidecar.core.errors import (
    AddressNotAllowed,
    KeyRestricted,
    NotAuthenticated,
    RateLimited,
    SidecarError,
    StoreUnavailable,
    TooManyFailedAuth,
)
from sidecar.core.paths import PrefixMatcher
from sidecar.core.types import Headers
from sidecar.keys.canary_events import CanaryEvents
from sidecar.observability.record import RequestRecord
from sidecar.observability.spans import RATE_LIMIT
from sidecar.proxy.headers import HeaderRules
from sidecar.ratelimit.limiter import DisabledRateLimiter, RateLimiter, Sent

# The refusals report-only mode turns into "forwarded, marked": 401, 403 for a
# restricted key, 429, and 503 for a key that cannot be verified. Anything else (413,
# 502...) is not an auth decision.
REPORTABLE = frozenset({401, 403, 429, 503})


class Decision(NamedTuple):
    identity: Identity | None  # None: a public path, or a report-only would-be refusal
    rate_headers: Headers  # for the client's response
    would_deny: int | None = None  # report-only: the status enforce mode would answer
    public: bool = False


class Early(NamedTuple):
    """What ``Gateway.start`` learnt at a request's head: its credential, which the key
    cache vouched for, the key's hash, and the rate-limit check it sent. ``passed``: the
    key's restrictions, which ``start`` checked this request against (so ``decide``
    need not again while the key it verifies still has them)."""

    credential: Credential
    key_hash: str
    sent: Sent | None
    passed: tuple[tuple[str, ...] | None, AllowedNetworks | None] = (None, None)


PUBLIC = Decision(None, [], None, True)
log = logging.getLogger("sidecar.auth")


class Decider:
    """Decides requests with the configured rules; built once at start."""

    def __init__(
        self,
        *,
        rules: HeaderRules,
        public_paths: PrefixMatcher,
        authenticator: Authenticator,
        limiter: RateLimiter,
        report_only: PrefixMatcher | None = None,
        assertion: AssertionSigner | None = None,
        restrictions: Restrictions | None = None,
        canaries: CanaryEvents | None = None,
    ) -> None:
        self._rules = rules
        self._canaries = canaries
        self.public = public_paths
        self._auth = authenticator
        self._limiter = limiter
        # Off, the check is no Redis round trip: a trace gets no span for it.
        self._no_limits = isinstance(limiter, DisabledRateLimiter)
        self._report_only = report_only
        self._assertion = assertion
        self.restrictions = restrictions or Restrictions(Scopes({}))

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
        limit. Raises NotAuthenticated, KeyRestricted, RateLimited, TooManyFailedAuth or
        StoreUnavailable to refuse. ``headers`` (the request's) tell who the client is
        behind a trusted proxy, for the failed-auth limit and a key's allowed addresses
        (the peer is ``record.client``). ``meanwhile(identity)`` runs once the
        credential is verified, while Redis answers the rate-limit check (it must not
        raise). ``early``: what ``start`` learnt and sent, if it ran."""
        if early is None and self.public.matches(normalised):  # ``start`` checked it
            return PUBLIC
        try:
            if ambiguous:  # a credential header sent twice: which one would the upstream use?
                record.auth_outcome = "ambiguous"
                raise NotAuthenticated("ambiguous")
            sent = early.sent if early is not None else None
            try:
                identity = await self._authenticate(api_key, authorization, headers, record, early)
                if identity.key_id is not None:
                    client = self._rules.proxies.client(record.client, headers)
                    self._auth.used_from(identity, client)
                    scopes, networks = identity.scopes, identity.networks
                    if (scopes is not None or networks is not None) and (
                        early is None
                        or early.passed[0] is not scopes
                        or early.passed[1] is not networks
                    ):
                        self._restrict(identity, method, normalised, record, client)
            except BaseException:
                if sent is not None:
                    sent.drop()
                raise
            check = self._limiter.check(identity.user_id, method, normalised, sent)
            if meanwhile is not None:
                meanwhile(identity)  # docs/design-notes.md: the rate-limit round trip
            trace = record.trace
            try:
                rate_headers = await (
                    check if trace is None or self._no_limits else trace.timed(RATE_LIMIT, check)
                )
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

    def _restrict(
        self,
        identity: Identity,
        method: str,
        normalised: str,
        record: RequestRecord,
        client: str | None,
    ) -> None:
        """A restricted key's checks: its addresses, then its scopes (before the rate
        limit, which a refusal does not charge)."""
        try:
            self.restrictions.check(identity.scopes, identity.networks, method, normalised, client)
        except KeyRestricted as exc:
            address = isinstance(exc, AddressNotAllowed)
            record.auth_outcome = "address_not_allowed" if address else "scope_not_granted"
            raise

    def permits(
        self,
        scopes: tuple[str, ...] | None,
        networks: AllowedNetworks | None,
        method: str,
        normalised: str,
        peer: str | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> bool:
        """Whether a key with these restrictions passes them for this request (so
        ``Gateway.start`` may charge its rate limit ahead; so an open WebSocket may stay
        open once its key changed)."""
        if scopes is None and networks is None:
            return True
        client = None if networks is None else self._rules.proxies.client(peer, headers)
        try:
            self.restrictions.check(scopes, networks, method, normalised, client)
        except KeyRestricted:
            return False
        return True

    def identity_headers(self, identity: Identity, method: str, normalised: str) -> Headers:
        """The request headers that tell the upstream who is calling (and, signed, for
        which route)."""
        rules = self._rules
        out = [
            (rules.user_id, identity.user_id.encode()),
            (rules.auth_method, identity.method.encode()),
        ]
        scope = None
        if identity.key_id is not None:
            scopes = self.restrictions.header(identity.scopes)
            out.append((rules.key_id, identity.key_id.encode()))
            out.append((rules.environment, _ENVIRONMENT[identity.environment]))
            out.append((rules.scopes, scopes))
            if identity.scopes is not None:
                scope = scopes.decode()
        if self._assertion is not None:
            token = self._assertion.sign(identity, method, normalised, scope)
            out.append((self._assertion.header, token))
        return out

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
                credential,
                peer=record.client,
                headers=incoming,
                key_hash=key_hash,
                trace=record.trace,
            )
        except NotAuthenticated as exc:
            record.auth_outcome = exc.reason
            if credential is not None and exc.reason in _WELL_FORMED_KEY_REJECTED:
                record.key_prefix = key_prefix(credential.value)  # public; tells ops which key
                if exc.reason == "canary":
                    key = exc.key if isinstance(exc, CanaryUsed) else None
                    self._canary_used(key, record, incoming)
            raise
        except StoreUnavailable:
            record.auth_outcome = "store_unavailable"
            raise
        except TooManyFailedAuth as exc:
            record.auth_outcome = "failed_auth_limited"
            if credential is not None and exc.instead_of == "canary":  # answered as any key
                record.key_prefix = key_prefix(credential.value)
                self._canary_used(exc.canary, record, incoming)
            raise
        finally:
            record.auth_seconds = time.perf_counter() - started
        record.auth_outcome = "ok"
        record.user_id = identity.user_id
        record.key_prefix = identity.key_prefix
        return identity

    def _canary_used(
        self,
        key: VerifiedKey | None,
        record: RequestRecord,
        incoming: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """Report a canary's use (a WARNING now, a ``canary.used`` event soon after)."""
        client = self._rules.proxies.client(record.client, incoming)
        _report_canary(record, client)
        if self._canaries is not None and key is not None:
            agent = next((v for n, v in incoming if n == b"user-agent"), None)
            self._canaries.used(
                key, client, None if agent is None else agent.decode("latin-1"), record.request_id
            )


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
