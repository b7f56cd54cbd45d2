"""``/api/v1/api-keys/``: create, list, expire, rotate keys and show their usage.
JWT only (SPEC.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from sidecar.authn import Authenticator, credential_from
from sidecar.domain import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_USAGE_DAYS,
    KEYS_API_PATH,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
    MIN_EXPIRY_LEAD_SECONDS,
    Environment,
    expired_json,
    key_list_json,
    usage_json,
)
from sidecar.errors import PayloadTooLarge, RequestInvalid
from sidecar.store import KeyStore
from sidecar.timeutil import utc_day

PREFIX = KEYS_API_PATH
_MAX_CREATE_BODY = 64 * 1024
_BOOL = TypeAdapter(bool)
_UUID = TypeAdapter(UUID)
_DAYS = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_USAGE_DAYS)])


def _iso_datetime(value: object) -> object:
    """Only an ISO 8601 string with a time zone: pydantic alone would also take a
    number (a Unix time) or a string of digits."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "Input should be an ISO 8601 date-time string with a time zone"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_parsing", "Input should be an ISO 8601 date-time with a time zone"
        ) from None
    if moment.tzinfo is None:
        raise PydanticCustomError("timezone_aware", "Input should have timezone info")
    return moment


class Lifetime:
    """What ``expires_at`` is checked against: the moment of the request and the
    longest lifetime configured (auth.api_keys.max_lifetime_days)."""

    def __init__(self, max_days: int, now: datetime | None = None) -> None:
        self.max_days = max_days
        self.now = now or datetime.now(UTC)


class CreateKeyBody(BaseModel):
    """The create request. Validate with ``context={"lifetime": Lifetime(...)}``."""

    model_config = ConfigDict(extra="ignore")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    expires_at: Annotated[datetime | None, BeforeValidator(_iso_datetime)] = None
    environment: Environment = "live"

    @field_validator("expires_at")
    @classmethod
    def _within_lifetime(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        lifetime: Lifetime = (info.context or {})["lifetime"]
        ahead = value - lifetime.now
        if ahead < timedelta(seconds=MIN_EXPIRY_LEAD_SECONDS):
            raise ValueError(f"must be at least {MIN_EXPIRY_LEAD_SECONDS} seconds in the future")
        if ahead > timedelta(days=lifetime.max_days):
            raise ValueError(f"must be at most {lifetime.max_days} days in the future")
        return value.astimezone(UTC)


class RotateKeyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grace_period_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS, strict=True
    )


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
    ) -> None:
        self._auth = authenticator
        self._store = store
        self._max_lifetime_days = max_lifetime_days
        # This instance forgets the key at once, not when its own pub/sub message returns.
        self._on_revoked = on_revoked
        routes = [
            Route(PREFIX, self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/", self._collection, methods=["GET", "POST"]),
            Route(PREFIX + "/{api_key_id}", self._item, methods=["DELETE"]),
            Route(PREFIX + "/{api_key_id}/", self._item, methods=["DELETE"]),
            Route(PREFIX + "/{api_key_id}/rotate", self._rotate, methods=["POST"]),
            Route(PREFIX + "/{api_key_id}/rotate/", self._rotate, methods=["POST"]),
            Route(PREFIX + "/{api_key_id}/usage", self._usage, methods=["GET"]),
            Route(PREFIX + "/{api_key_id}/usage/", self._usage, methods=["GET"]),
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
        key_id = _key_id(request)
        self._on_revoked(await self._store.revoke(key_id, user_id))
        return json_response(200, expired_json())

    async def _create(self, request: Request, user_id: str) -> Response:
        payload = await _json_body(request)
        lifetime = Lifetime(self._max_lifetime_days)
        try:
            parsed = CreateKeyBody.model_validate(payload, context={"lifetime": lifetime})
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        created = await self._store.create(
            user_id,
            parsed.description,
            environment=parsed.environment,
            expires_at=parsed.expires_at,
        )
        return json_response(201, created.as_json())

    async def _rotate(self, request: Request) -> Response:
        user_id = await self._user(request)
        key_id = _key_id(request)
        payload = await _json_body(request)
        try:
            parsed = RotateKeyBody.model_validate(payload)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "body")) from None
        created, old_hash = await self._store.rotate(key_id, user_id, parsed.grace_period_seconds)
        self._on_revoked(old_hash)  # its answer changed: look it up again
        return json_response(201, {**created.as_json(), "rotated_from": key_id})

    async def _usage(self, request: Request) -> Response:
        user_id = await self._user(request)
        key_id = _key_id(request)
        try:
            days = _DAYS.validate_python(request.query_params.get("days", DEFAULT_USAGE_DAYS))
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "query", "days")) from None
        prefix, daily = await self._store.usage(key_id, user_id, usage_window(days))
        return json_response(200, usage_json(key_id, prefix, daily))

    async def _list(self, request: Request, user_id: str) -> Response:
        raw = request.query_params.get("include_expired", "false")
        try:
            include_expired = _BOOL.validate_python(raw)
        except ValidationError as exc:
            raise RequestInvalid(_errors(exc, "query", "include_expired")) from None
        return json_response(200, key_list_json(await self._store.list(user_id, include_expired)))


def usage_window(days: int, now: float | None = None) -> list[str]:
    """The last ``days`` UTC days, oldest first, today included."""
    today = time.time() if now is None else now
    return [utc_day(today - back * 86400) for back in range(days - 1, -1, -1)]


def _key_id(request: Request) -> str:
    try:
        return str(_UUID.validate_python(request.path_params["api_key_id"]))
    except ValidationError as exc:
        raise RequestInvalid(_errors(exc, "path", "api_key_id")) from None


async def _json_body(request: Request) -> Any:
    """The request's JSON body; an empty body is ``{}``."""
    body = await _read_limited(request, _MAX_CREATE_BODY)
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


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
