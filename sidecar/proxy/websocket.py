"""WebSocket pass-through: the open sockets, bounded, and what closes them.

After an authenticated upgrade (GET only, RFC 6455 §4.1: gateway.py refuses any other
method before the decision) the upgrade goes upstream; after the upstream's 101 the
bytes are relayed both ways (websocket_tunnel.py). Open sockets are bounded by
``server.max_websockets`` (beyond: 503). A graceful shutdown closes them with 1001.

A socket is closed with 1008 when the credential that opened it stops being valid: the
key revoked or expired, or updated so that its scopes or allowed addresses no longer
admit the socket's request; the JWT's ``exp`` plus leeway passed. Revocations reach open
sockets through the key cache's eviction callbacks (the revocation feed, the keys API,
secret scanning): the evicted key is verified again, once for all its sockets, and
they are closed unless it still works (a rotated key in its grace period stays open
until its new ``expires_at``). Any answer but a working key closes them. The
re-verification does not go through the failed-auth limit: the client passed it when
it connected, and a revoked key's failure is not a guess of the client's (counted
against one shared budget, throwaway keys revoked on purpose could spend it and keep
every later re-verification from running).

When Redis cannot say (it is unreachable, or the revocation feed is lost, so no
eviction would arrive), a key's sockets stay open for at most the stale window
(``auth.api_keys.stale_window_seconds``, the time an HTTP request may be served from
a stale cache entry), counted from when that was found; then the key is verified
again and its sockets are closed unless that works. While the feed stays lost, this
repeats every window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import jwt
from starlette.types import Send

from sidecar.auth.credentials import API_KEY, JWT, Credential, Identity
from sidecar.core.errors import (
    NotAuthenticated,
    StoreUnavailable,
    TooManyWebSockets,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.core.types import Headers
from sidecar.keys.hashing import KeyHasher
from sidecar.proxy.upstream import UpstreamClient
from sidecar.proxy.websocket_frames import GOING_AWAY
from sidecar.proxy.websocket_tunnel import (
    ClientSide,
    Tunnel,
    UpstreamSide,
    relay_refusal,
    switching_head,
)

log = logging.getLogger("sidecar.websocket")

_UPGRADE = ((b"connection", b"Upgrade"), (b"upgrade", b"websocket"))

TakeOver = Callable[[Callable[[], None]], tuple[asyncio.Transport, bytes, Callable[[], None]]]
Reverify = Callable[[Credential], Awaitable[Identity]]
Admits = Callable[[Identity], bool]


def wants_websocket(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


class _KeySockets:
    """The open sockets of one API key, and the checks of that key."""

    __slots__ = ("bound", "checks", "credential", "prefix", "tunnels")

    def __init__(self, credential: Credential, prefix: str | None) -> None:
        self.credential = credential
        self.prefix = prefix  # public: for logs
        # Each socket, and whether the key as verified again may keep it (its scopes and
        # allowed addresses, which a PATCH can change, against the socket's request).
        self.tunnels: dict[Tunnel, Admits] = {}
        self.checks = 0  # checks started; only the latest one's success counts
        self.bound: asyncio.TimerHandle | None = None  # the key must be verified by then


class WebSockets:
    """The open relayed sockets, bounded, and what closes them."""

    def __init__(
        self,
        *,
        limit: int,
        hasher: KeyHasher,
        reverify: Reverify,
        jwt_leeway: float,
        stale_window: float,
    ) -> None:
        self._limit = limit
        self._hasher = hasher
        self._reverify = reverify
        self._leeway = jwt_leeway
        self._stale_window = stale_window
        self._open: dict[Tunnel, str | None] = {}  # each socket's key hash (None: no key)
        self._opening = 0
        self._by_key: dict[str, _KeySockets] = {}
        self._checks: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._open)

    async def relay(
        self,
        *,
        upstream: UpstreamClient,
        take_over: TakeOver,
        send: Send,
        path: bytes,
        query: bytes,
        headers: Headers,
        response_headers: Headers,
        identity: Identity | None,
        credential: Credential | None,
        admits: Admits = lambda identity: True,
        closed_by_us: Callable[[int], None] | None = None,
    ) -> int:
        """Open the upstream socket and relay until either side closes. The status the
        client got (101, or the upstream's refusal). Raises a SidecarError (503 over
        the limit, 502/504 upstream) only while nothing was sent. ``admits``: whether
        the key, verified again later, may keep this socket open. ``closed_by_us(code)``
        is told when the sidecar closed the socket itself (1008, 1001)."""
        if len(self._open) + self._opening >= self._limit:
            raise TooManyWebSockets()
        self._opening += 1
        try:
            side = await upstream.connect(UpstreamSide)
            try:
                side.write(upstream.request_head("GET", path, query, [*headers, *_UPGRADE]))
                async with asyncio.timeout(upstream.read_timeout):
                    await side.head
            except TimeoutError as exc:
                side.abort()
                raise UpstreamTimeout() from exc
            except (OSError, httptools.HttpParserError) as exc:
                side.abort()
                raise UpstreamUnavailable() from exc
        finally:
            self._opening -= 1
        if not side.upgraded:
            await relay_refusal(side, send, response_headers, upstream.read_timeout)
            return side.status
        holder: list[Tunnel] = []
        client, early, release = take_over(lambda: holder[0].close_policy(GOING_AWAY))
        client.write(switching_head(side.headers, response_headers))
        tunnel = Tunnel(client, side)
        holder.append(tunnel)
        client.set_protocol(ClientSide(tunnel))
        side.attach(tunnel)
        if early:
            side.write(early)
        client.resume_reading()
        self._track(tunnel, identity, credential, admits)
        try:
            await tunnel.done
        finally:
            tunnel.end()
            self._untrack(tunnel)
            release()
            if tunnel.closing and closed_by_us is not None:
                closed_by_us(tunnel.code)
        return 101

    def _track(
        self,
        tunnel: Tunnel,
        identity: Identity | None,
        credential: Credential | None,
        admits: Admits,
    ) -> None:
        self._open[tunnel] = None
        if identity is None or credential is None:
            return  # a public path: nothing to revoke
        if identity.method == API_KEY:
            key_hash = self._hasher.hash(credential.value)
            self._open[tunnel] = key_hash
            group = self._by_key.get(key_hash)
            if group is None:
                group = self._by_key[key_hash] = _KeySockets(credential, identity.key_prefix)
            group.tunnels[tunnel] = admits
            tunnel.expire_at(identity.expires_at)
        elif identity.method == JWT:
            tunnel.expire_at(self._jwt_deadline(credential.value))

    def _untrack(self, tunnel: Tunnel) -> None:
        key_hash = self._open.pop(tunnel, None)
        group = None if key_hash is None else self._by_key.get(key_hash)
        if key_hash is None or group is None:
            return
        group.tunnels.pop(tunnel, None)
        if not group.tunnels:
            if group.bound is not None:
                group.bound.cancel()
            del self._by_key[key_hash]

    def _jwt_deadline(self, token: str) -> float | None:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        exp = claims.get("exp")
        return float(exp) + self._leeway if isinstance(exp, int | float) else None

    # what closes sockets: the key cache's news, and the bound while Redis cannot say

    def evicted(self, key_hash: str | None) -> None:
        """The key cache dropped ``key_hash`` (None: everything): verify that key again;
        its sockets are closed with 1008 unless it still works."""
        for each in list(self._by_key) if key_hash is None else [key_hash]:
            if each in self._by_key:
                self._check(each, final=False)

    def desynced(self) -> None:
        """The revocation feed is lost: no eviction would tell of a revocation. Every
        key's sockets are held to the stale window from now (unless already held)."""
        for key_hash, group in self._by_key.items():
            self._hold(key_hash, group)

    def _hold(self, key_hash: str, group: _KeySockets) -> None:
        if group.bound is None:
            loop = asyncio.get_running_loop()
            group.bound = loop.call_later(self._stale_window, self._check, key_hash, True)

    def _check(self, key_hash: str, final: bool) -> None:
        check = asyncio.ensure_future(self._verify_again(key_hash, final))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    async def _verify_again(self, key_hash: str, final: bool) -> None:
        """``final``: the stale window has passed; Redis must answer now."""
        group = self._by_key.get(key_hash)
        if group is None:
            return
        if final:
            group.bound = None
        group.checks += 1
        this_check = group.checks
        try:
            identity = await self._reverify(group.credential)
        except StoreUnavailable:
            if final:
                log.warning(
                    "closing the WebSockets of key %s: Redis could not verify it within "
                    "the stale window",
                    group.prefix,
                )
                self._close(group)
            else:
                log.warning(
                    "could not verify key %s again (Redis unavailable); its WebSockets "
                    "stay open for at most %g s",
                    group.prefix,
                    self._stale_window,
                )
                self._hold(key_hash, group)
            return
        except NotAuthenticated:
            self._close(group)
            return
        except Exception:
            log.exception("verifying an open WebSocket's key again failed; closing its sockets")
            self._close(group)
            return
        if this_check != group.checks:
            return  # a later check decides (a success may predate a revocation)
        if group.bound is not None:
            group.bound.cancel()
            group.bound = None
        for tunnel, admits in list(group.tunnels.items()):
            if admits(identity):
                tunnel.expire_at(identity.expires_at)
            else:  # updated: no longer from this address, or for this path
                tunnel.close_policy()

    @staticmethod
    def _close(group: _KeySockets) -> None:
        for tunnel in list(group.tunnels):
            tunnel.close_policy()

    def close_all(self) -> None:
        for tunnel in list(self._open):
            with contextlib.suppress(Exception):
                tunnel.close_policy(GOING_AWAY)
