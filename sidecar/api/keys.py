"""``/api/v1/api-keys/``: create, list, update, expire, rotate keys and show their
usage and audit events. JWT only (SPEC.md). Each change carries who made it and from
where (an AuditContext) to the store, which records it with the change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from sidecar.auth.credentials import Authenticator, credential_from
from sidecar.core.bodies import read_body
from sidecar.core.clientaddr import TrustedProxies
from sidecar.core.domain import (
    DEFAULT_USAGE_DAYS,
    KEYS_API_PATH,
    USER,
    AuditContext,
    expired_json,
    key_list_json,
    usage_json,
)
from sidecar.core.errors import RequestInvalid
from sidecar.core.types import REQUEST_ID
from sidecar.keys.audit_events import valid_event_id
from sidecar.keys.audit_reader import AuditReader
from sidecar.keys.input import (
    UPDATE_NOTHING,
    USAGE_DAYS,
    CreateKeyBody,
    Lifetime,
    RotateKeyBody,
    UpdateKeyBody,
    usage_window,
)
from sidecar.keys.store import UNCHANGED, KeyStore

PREFIX = KEYS_API_PATH
_MAX_CREATE_BODY = 64 * 1024
_BOOL = TypeAdapter(bool)
_UUID = TypeAdapter(UUID)
_EVENTS_LIMIT = TypeAdapter(Annotated[int, Field(ge=1, le=200)])
DEFAULT_EVENTS_LIMIT = 50


def _event_id(value: str) -> str:
    if not valid_event_id(value):
        raise ValueError("must be an event id (<milliseconds>-<sequence>)")
    return value


EVENT_ID = TypeAdapter(Annotated[str, AfterValidator(_event_id)])


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _errors(exc: ValidationError, *where: str) -> list[dict[str, Any]]:
    """Pydantic's errors in FastAPI's shape: ``loc`` starts with body/query/path."""
    out = []
    for detail in exc.errors(include_url=False):
        error: dict[str, Any] = {**detail, "loc": [*where, *detail["loc"]]}
        if "ctx" in detail:  # a ValueError raised by a validator: its message, as FastAPI
            error["ctx"] = {
                k: str(v) if isinstance(v, Exception) else v for k, v in detail["ctx"].items()
            }
        out.append(error)
    return out


class KeysApi:
    def __init__(
        self,
        authenticator: Authenticator,
        store: KeyStore,
        on_revoked: Callable[[str], None] = lambda key_hash: None,
        *,
        max_lifetime_days: int = 365,
        scopes: frozenset[str] = frozenset(),
        proxies: TrustedProxies | None = None,
        events: AuditReader | None = None,
    ) -> None:
        self._auth = authenticator
        self._store = store
        self._proxies = proxies or TrustedProxies(())
        self._events = events
        self._max_lifetime_days = max_lifetime_days
        self._scopes = scopes  # the configured scope names a key may be given
        # This instance forgets the key at once, not when its own pub/sub message returns.
        self._on_revoked = on_revoked
        routes = [
            Route(PREFIX, self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/", self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/{api_key_id}", self._item, methods=["DELETE", "PATCH"]),
            Route(PREFIX + "/{api_key_id}/", self._item, methods=["DELETE", "PATCH"]),
            Route(PREFIX + "/{api_key_id}/rotate", self._rotate, methods=["POST"]),
            Route(PREFIX + "/{api_key_id}/rotate/", self._rotate, methods=["POST"]),
            Route(PREFIX + "/{api_key_id}/usage", self._usage, methods=["GET"]),
            Route(PREFIX + "/{api_key_id}/usage/", self._usage, methods=["GET"]),
            Route(PREFIX + "/{api_key_id}/events", self._key_events, methods=["GET"]),
            Route(PREFIX + "/{api_key_id}/events/", self._key_events, methods=["GET"]),
        ]
        self.app = Router(routes, redirect_slashes=False)

    async def _user(self, request: Request) -> str:
        api_key = request.headers.get("x-api-key")
        authorization = request.headers.get("authorization")
        credential = credential_from(
            None if api_key is None else api_key.encode("latin-1"),
            None if authorization is None else authorization.encode("latin-1"),
        )
        return await self._auth.jwt_only(credential)

    # A SidecarError raised here propagates to app.py, which renders every error.
    def _context(self, request: Request, user_id: str) -> AuditContext:
        """Who is changing a key, from where: the client address as the failed-auth
        limit sees it (``server.trusted_proxies`` honoured)."""
        client = request.scope.get("client")
        peer = client[0] if client else None
        return AuditContext(
            USER,
            user_id,
            self._proxies.client(peer, request.scope["headers"]),
            request.headers.get("user-agent"),
            request.scope.get(REQUEST_ID),
        )

    async def _collection(self, request: Request) -> Response:
        user_id = await self._user(request)
        if request.method == "POST":
            return await self._create(request, user_id)
        return await self._list(request, user_id)

    async def _item(self, request: Request) -> Response:
        user_id = await self._user(request)
        key_id = _key_id(request)
        if request.method == "PATCH":
            return await self._update(request, user_id, key_id)
        context = self._context(request, user_id)
        self._on_revoked(await self._store.revoke(key_id, user_id, context=context))
        return json_response(200, expired_json())

    async def _create(self, request: Request, user_id: str) -> Response:
        payload = await _json_body(request)
        context = {"lifetime": Lifetime(self._max_lifetime_days), "scopes": self._scopes}
        try:
            parsed = CreateKeyBody.model_validate(payload, context=context)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        created = await self._store.create(
            user_id,
            parsed.description,
            environment=parsed.environment,
            expires_at=parsed.expires_at,
            scopes=None if parsed.scopes is None else tuple(parsed.scopes),
            allowed_ips=None if parsed.allowed_ips is None else tuple(parsed.allowed_ips),
            context=self._context(request, user_id),
        )
        return json_response(201, created.as_json())

    async def _update(self, request: Request, user_id: str, key_id: str) -> Response:
        payload = await _json_body(request)
        try:
            parsed = UpdateKeyBody.model_validate(payload, context={"scopes": self._scopes})
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        given = parsed.model_fields_set
        if not given:
            raise RequestInvalid([{**UPDATE_NOTHING, "input": payload}])
        view, _, key_hash = await self._store.update(
            key_id,
            user_id,
            description=parsed.description if "description" in given else UNCHANGED,
            scopes=_tuple(parsed.scopes) if "scopes" in given else UNCHANGED,
            allowed_ips=_tuple(parsed.allowed_ips) if "allowed_ips" in given else UNCHANGED,
            context=self._context(request, user_id),
        )
        self._on_revoked(key_hash)  # this instance looks the key up again at once
        return json_response(200, view)

    async def _rotate(self, request: Request) -> Response:
        user_id = await self._user(request)
        key_id = _key_id(request)
        payload = await _json_body(request)
        try:
            parsed = RotateKeyBody.model_validate(payload)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        created, old_hash = await self._store.rotate(
            key_id, user_id, parsed.grace_period_seconds, self._context(request, user_id)
        )
        self._on_revoked(old_hash)  # its answer changed: look it up again
        return json_response(201, {**created.as_json(), "rotated_from": key_id})

    async def _usage(self, request: Request) -> Response:
        user_id = await self._user(request)
        key_id = _key_id(request)
        try:
            days = USAGE_DAYS.validate_python(request.query_params.get("days", DEFAULT_USAGE_DAYS))
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "query", "days")) from None
        prefix, daily, networks = await self._store.usage(key_id, user_id, usage_window(days))
        return json_response(200, usage_json(key_id, prefix, daily, networks))

    async def _key_events(self, request: Request) -> Response:
        """The key's audit events, newest first; ``before`` pages to older ones."""
        user_id = await self._user(request)
        key_id = _key_id(request)
        query = request.query_params
        errors: list[dict[str, Any]] = []
        limit = DEFAULT_EVENTS_LIMIT
        before = None
        try:
            limit = _EVENTS_LIMIT.validate_python(query.get("limit", DEFAULT_EVENTS_LIMIT))
        except ValidationError as exc:
            errors += _errors(exc, "query", "limit")
        try:
            if "before" in query:
                before = EVENT_ID.validate_python(query["before"])
        except ValidationError as exc:
            errors += _errors(exc, "query", "before")
        if errors:
            raise RequestInvalid(errors)
        await self._store.check_owner(key_id, user_id)
        assert self._events is not None
        events = await self._events.key_events(key_id, limit, before)
        return json_response(200, {"events": events})

    async def _list(self, request: Request, user_id: str) -> Response:
        raw = request.query_params.get("include_expired", "false")
        try:
            include_expired = _BOOL.validate_python(raw)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "query", "include_expired")) from None
        return json_response(
            200, key_list_json(await self._store.list_keys(user_id, include_expired))
        )


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _key_id(request: Request) -> str:
    try:
        return str(_UUID.validate_python(request.path_params["api_key_id"]))
    except ValidationError as exc:
        raise RequestInvalid(_errors(exc, "path", "api_key_id")) from None


async def _json_body(request: Request) -> Any:
    """The request's JSON body; an empty body is ``{}``."""
    body = await read_body(request.receive, _MAX_CREATE_BODY)
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestInvalid(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
