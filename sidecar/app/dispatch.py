"""The public listener's ASGI app: each request routed once, at its head, to the keys
API, the secret-scanning endpoint, the API Keys page (when on) or the gateway
(everything else), with one error mapping for what they raise.
"""

from __future__ import annotations

import logging
import time

from starlette.types import Message, Receive, Scope, Send

from sidecar.api.keys import PREFIX as KEYS_PREFIX
from sidecar.app.build import Components
from sidecar.core.errors import (
    CLIENT_CLOSED,
    AmbiguousPath,
    ClientGone,
    SidecarError,
    rendered,
)
from sidecar.core.paths import decided_path
from sidecar.core.types import REQUEST_ID, Route
from sidecar.observability.record import RequestRecord
from sidecar.proxy.headers import request_id

log = logging.getLogger("sidecar")

_GATEWAY: Route = "proxy"  # the route of everything the gateway handles (it may say "public")
_ROUTED = "sidecar.routed"  # in a scope: (normalised path, route), from ``on_head``


class Sidecar(Components):
    """The public ASGI app, over the components build.py wires."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def on_head(self, scope: Scope) -> None:
        """The public server's head hook (httpserver.py): a request head was just
        parsed and this app is called for it next. A request for the gateway starts
        there and then (``Gateway.start``: its rate-limit check goes to Redis)."""
        normalised, route = self._route(scope)
        scope[_ROUTED] = (normalised, route)
        if route == _GATEWAY:
            self.gateway.start(scope, normalised)

    def _route(self, scope: Scope) -> tuple[str, Route]:
        """The normalised path, and which part of the sidecar answers: the RequestRecord
        route it is logged as."""
        normalised, refused = decided_path(
            scope["raw_path"] or b"", scope["path"], refuse_ambiguous=self._reject_ambiguous
        )
        if refused:
            return normalised, "refused"
        if self._scanning_path is not None and (
            normalised.rstrip("/").lower() == self._scanning_path
        ):
            return normalised, "secret_scanning"
        if self._owned.matches(normalised):
            return normalised, "api_keys"
        if self.console is not None and self.console.matches(normalised):
            return normalised, "console"
        return normalised, _GATEWAY

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":  # names are lower case in an ASGI scope
                incoming_id = value
                break
        rid = request_id(incoming_id)
        routed = scope.get(_ROUTED)
        if routed is None:
            normalised, route = self._route(scope)
        else:
            normalised, route = routed
        client = scope.get("client")
        record = RequestRecord(
            method=scope["method"],
            path=normalised,
            route=route,
            request_id=rid.decode(),
            client=client[0] if client else None,
            started=time.perf_counter(),
        )
        if self.tracer is not None:
            record.trace, record.trace_context = self.tracer.server(
                scope["headers"], record, scope.get("server"), scope["http_version"]
            )
        self.metrics.in_flight.inc()
        try:
            if route == "refused":
                raise AmbiguousPath()
            if route != _GATEWAY:
                scope[REQUEST_ID] = record.request_id  # for the audit events it causes
            if route == "secret_scanning":
                assert self.scanning is not None
                await self.scanning.handle(scope, receive, _Started(send, rid, record))
            elif route == "console":
                assert self.console is not None
                page_scope = dict(scope, path=normalised)
                await self.console(page_scope, receive, _Started(send, rid, record))
            elif route == "api_keys":
                owned_scope = dict(scope, path=KEYS_PREFIX + normalised[len(KEYS_PREFIX) :])
                await self.keys_api.app(owned_scope, receive, _Started(send, rid, record))
            else:  # the hot path: the gateway sets X-Request-ID and the record itself
                await self.gateway.handle(
                    scope, receive, send, normalised=normalised, request_id=rid, record=record
                )
        except SidecarError as exc:
            record.status = exc.status
            if not record.responded:
                await _send_error(send, exc, rid)
        except ClientGone:
            record.status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error on %s %s", record.method, record.path)
            record.status = 500
            if not record.responded:
                await _send_error(send, SidecarError(), rid)
        finally:
            self.metrics.in_flight.dec()
            record.duration = time.perf_counter() - record.started
            self.finished(record)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Started:
    """Wraps ``send`` for the keys API: adds X-Request-ID to its responses, and records
    that the response began and its status."""

    __slots__ = ("_record", "_request_id", "_send")

    def __init__(self, send: Send, rid: bytes, record: RequestRecord) -> None:
        self._send = send
        self._request_id = rid
        self._record = record

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._record.responded = True
            headers = list(message.get("headers", []))
            if not any(n.lower() == b"x-request-id" for n, _ in headers):
                headers.append((b"x-request-id", self._request_id))
            message = dict(message, headers=headers)
            self._record.status = message["status"]
        await self._send(message)


async def _send_error(send: Send, exc: SidecarError, rid: bytes) -> None:
    status, headers, body = rendered(exc, rid)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
