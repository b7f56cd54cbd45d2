"""``callcov-sidecar keys ...``: operator actions on API keys, straight on Redis with
the API's own rules (its request models, the store and its scripts), and the Redis
connection the operator commands share."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from sidecar.config.model import Config, mask_url
from sidecar.core.domain import (
    LIVE,
    MAX_DESCRIPTION,
    USER_ID_RULE,
    expired_json,
    key_list_json,
    usage_json,
    valid_user_id,
)
from sidecar.core.errors import EXIT_FAILURE, EXIT_OK
from sidecar.keys.input import (
    USAGE_DAYS,
    CreateKeyBody,
    Lifetime,
    RotateKeyBody,
    UpdateKeyBody,
    usage_window,
)


class UsageError(Exception):
    """A command-line value the API would reject with 422."""


def user_id(value: str) -> str:
    # The same rule as the HTTP API applies to a JWT's user id.
    if not valid_user_id(value):
        raise UsageError(USER_ID_RULE)
    return value


def create(config: Config, args: argparse.Namespace) -> int:
    user = user_id(args.user)
    if args.description is not None and len(args.description) > MAX_DESCRIPTION:
        raise UsageError(f"--description is longer than {MAX_DESCRIPTION} characters")
    if args.canary and (args.expires_at is not None or args.environment != LIVE):
        raise UsageError("a --canary key is a live key that never expires")
    if args.canary and (args.scopes or args.allowed_ips):
        raise UsageError("a --canary key has no scopes or allowed addresses")
    body = _validated(
        CreateKeyBody,
        {
            "expires_at": args.expires_at,
            "environment": args.environment,
            "scopes": args.scopes,
            "allowed_ips": args.allowed_ips,
        },
        context={
            "lifetime": Lifetime(config.auth.api_keys.max_lifetime_days),
            "scopes": frozenset(config.auth.scopes),
        },
    )

    async def action(store: Any) -> Any:
        if args.canary:
            return {**(await store.create_canary(user, args.description)).as_json(), "canary": True}
        created = await store.create(
            user,
            args.description,
            environment=body.environment,
            expires_at=body.expires_at,
            scopes=_tuple(body.scopes),
            allowed_ips=_tuple(body.allowed_ips),
        )
        return created.as_json()

    return _with_store(config, action)


def list_keys(config: Config, args: argparse.Namespace) -> int:
    user = user_id(args.user)

    async def action(store: Any) -> Any:
        listing = store.list_canaries if args.canary else store.list_keys
        return key_list_json(await listing(user, args.include_expired))

    return _with_store(config, action)


def _key_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise UsageError(f"KEY_ID must be a UUID, got {text!r}") from None


# The API's fields as the options that carry them, for messages.
_OPTIONS = {
    "description": "--description",
    "scopes": "--scope",
    "allowed_ips": "--allow-ip",
    "expires_at": "--expires-at",
    "environment": "--environment",
    "grace_period_seconds": "--grace-period",
}

M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], values: dict[str, Any], context: Any = None) -> M:
    """``values`` checked by the API's own request model; a problem is a usage error."""
    try:
        return model.model_validate(values, context=context)
    except ValidationError as exc:
        problems = [
            f"{_OPTIONS.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()
        ]
        raise UsageError("; ".join(problems)) from None


def _whole_number(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option}: not a whole number: {text!r}") from None


def rotate(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    grace = _whole_number(args.grace_period, "--grace-period")
    body = _validated(RotateKeyBody, {"grace_period_seconds": grace})

    async def action(store: Any) -> Any:
        created, _ = await store.rotate(key_id, None, body.grace_period_seconds)
        return {**created.as_json(), "rotated_from": key_id}

    return _with_store(config, action)


def update(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    values: dict[str, Any] = {}
    for name in ("description", "scopes", "allowed_ips"):
        given, clear = getattr(args, name), getattr(args, f"clear_{name}")
        if given is not None and clear:
            raise UsageError(f"{_OPTIONS[name]} and --clear-{name.replace('_', '-')} together")
        if given is not None or clear:
            values[name] = given
    if not values:
        raise UsageError("nothing to change: give --description, --scope, --allow-ip or a --clear-")
    body = _validated(UpdateKeyBody, values, context={"scopes": frozenset(config.auth.scopes)})
    changes = {
        name: _tuple(v) if isinstance(v := getattr(body, name), list) else v for name in values
    }

    async def action(store: Any) -> Any:
        return (await store.update(key_id, None, **changes))[0]

    return _with_store(config, action)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def usage(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    try:
        days = USAGE_DAYS.validate_python(_whole_number(args.days, "--days"))
    except ValidationError as exc:
        raise UsageError(f"--days: {exc.errors()[0]['msg']}") from None

    async def action(store: Any) -> Any:
        prefix, daily, networks = await store.usage(key_id, None, usage_window(days))
        return usage_json(key_id, prefix, daily, networks)

    return _with_store(config, action)


def revoke(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)

    async def action(store: Any) -> Any:
        await store.revoke(key_id, None)
        return expired_json()

    return _with_store(config, action)


def _with_store(config: Config, action: Callable[[Any], Awaitable[Any]]) -> int:
    """Run ``action`` on a KeyStore; print its result as JSON. Changes are audited as
    the operator's, and their events logged as JSON lines on stderr."""
    from sidecar.keys.audit_events import configured_key
    from sidecar.keys.audit_trail import AuditTrail
    from sidecar.keys.hashing import KeyHasher
    from sidecar.keys.store import KeyStore
    from sidecar.observability.logs import audit_lines_to_stderr
    from sidecar.redisconn.client import durability

    audit_lines_to_stderr()
    retry_after = config.redis.retry_after_seconds

    async def use(redis: Any, url: str) -> int:
        secret = config.auth.api_keys.hash_secret.get_secret_value().encode()
        store = KeyStore(
            redis,
            KeyHasher(secret),
            config.auth.api_keys.max_active_per_user,
            retry_after=retry_after,
            durability=durability(url, config.redis),
            audit=AuditTrail(configured_key(config), config.audit.retention_days, retry_after),
        )
        result = await action(store)
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK

    return with_redis(config, use)


def with_redis(config: Config, use: Callable[[Any, str], Awaitable[int]]) -> int:
    """Connect to the configured Redis (or start the embedded one), run ``use`` on it;
    its exit code, or 1 with the reason when Redis or the action fails."""
    from sidecar.core.errors import SidecarError, StoreUnavailable
    from sidecar.redisconn.client import REDIS_ERRORS, connect
    from sidecar.redisconn.embedded import EmbeddedRedisError
    from sidecar.server.run import resolve_redis_url

    try:
        url, embedded = resolve_redis_url(config, share=True)
    except EmbeddedRedisError as exc:
        print(f"error: cannot start the embedded Redis: {exc}", file=sys.stderr)
        return EXIT_FAILURE

    async def run() -> int:
        redis = connect(url, config.redis)
        try:
            return await use(redis, url)
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(config.redis.retry_after_seconds) from exc
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "no answer"
        where = mask_url(url)
        print(f"error: Redis unreachable at {where} ({cause})", file=sys.stderr)
        return EXIT_FAILURE
    except SidecarError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if embedded is not None:
            embedded.stop()
