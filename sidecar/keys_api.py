"""``/api/v1/api-keys/``: create, list and expire keys. JWT only (SPEC.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from sidecar.authn import Authenticator, credential_from
from sidecar.domain import KEYS_API_PATH, MAX_DESCRIPTION, expired_json, key_list_json
from sidecar.errors import PayloadTooLarge, RequestInvalid
from sidecar.store import KeyStore

PREFIX = KEYS_API_PATH
_MAX_CREATE_BODY = 64 * 1024
_BOOL = TypeAdapter(bool)
_UUID = TypeAdapter(UUID)


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _errors(exc: ValidationError, *where: str) -> list[dict[str, Any]]:
    """Pydantic's errors in FastAPI's shape: ``loc`` starts with body/query/path."""
    return [{**detail, "loc": [*where, *detail["loc"]]} for detail in exc.errors(include_url=False)]


class KeysApi:
    def __init__(
        self,
        authenticator: Authenticator,
        store: KeyStore,
        on_revoked: Callable[[str], None] = lambda key_hash: None,
    ) -> None:
        self._auth = authenticator
        self._store = store
        # This instance forgets the key at once, not when its own pub/sub message returns.
        self._on_revoked = on_revoked
        routes = [
            Route(PREFIX, self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/", self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/{api_key_id}", self._item, methods=["DELETE"]),
            Route(PREFIX + "/{api_key_id}/", self._item, methods=["DELETE"]),
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
    async def _collection(self, request: Request) -> Response:
        user_id = await self._user(request)
        if request.method == "POST":
            return await self._create(request, user_id)
        return await self._list(request, user_id)

    async def _item(self, request: Request) -> Response:
        user_id = await self._user(request)
        raw_id = request.path_params["api_key_id"]
        try:
            key_id = _UUID.validate_python(raw_id)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "path", "api_key_id")) from None
        self._on_revoked(await self._store.revoke(str(key_id), user_id))
        return json_response(200, expired_json())

    async def _create(self, request: Request, user_id: str) -> Response:
        body = await _read_limited(request, _MAX_CREATE_BODY)
        payload: Any = {}
        if body.strip():
            try:
                payload = orjson.loads(body)
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
        try:
            parsed = CreateKeyBody.model_validate(payload)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        created = await self._store.create(user_id, parsed.description)
        return json_response(201, created.as_json())

    async def _list(self, request: Request, user_id: str) -> Response:
        raw = request.query_params.get("include_expired", "false")
        try:
            include_expired = _BOOL.validate_python(raw)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "query", "include_expired")) from None
        return json_response(200, key_list_json(await self._store.list(user_id, include_expired)))


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
