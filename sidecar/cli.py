"""``callcov-sidecar``: serve, check-config, keys (operator actions), audit, token.

Exit codes: 0 success; 1 runtime failure (a port in use, Redis unreachable for an
operator command, an unknown key id, the key limit reached, ...); 2 usage error or
invalid configuration (nothing was started).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import yaml
from pydantic import BaseModel, ValidationError

from sidecar.config import loading as config_module
from sidecar.config.model import Config, ConfigError, mask_url
from sidecar.core.domain import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_USAGE_DAYS,
    LIVE,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
    USER_ID_RULE,
    expired_json,
    key_list_json,
    usage_json,
    valid_user_id,
)
from sidecar.core.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from sidecar.keys.input import (
    USAGE_DAYS,
    CreateKeyBody,
    Lifetime,
    RotateKeyBody,
    UpdateKeyBody,
    usage_window,
)

DEFAULT_CONFIG = "config/sidecar.yaml"
EXIT_CODES = "exit codes: 0 ok, 1 runtime failure, 2 usage error or invalid configuration"


class _Usage(Exception):
    """A command-line value the API would reject with 422."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    path = args.config or os.environ.get("SIDECAR_CONFIG") or DEFAULT_CONFIG
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Callable[[Config, argparse.Namespace], int] = args.handler
    try:
        return handler(config, args)
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callcov-sidecar",
        description="API-key authentication sidecar for the CallCov API.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--config",
        help=f"YAML config file (default: $SIDECAR_CONFIG, else {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    def command(
        group: Any, name: str, summary: str, handler: Callable[..., int]
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=summary, description=summary, epilog=EXIT_CODES
        )
        # Accepted after the command too: `callcov-sidecar serve --config FILE`.
        sub.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file")
        sub.set_defaults(handler=handler)
        return sub

    serve = command(commands, "serve", "run the sidecar until SIGTERM/SIGINT", _serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes sharing the public port (overrides server.workers)",
    )
    serve.add_argument(
        "--example-upstream",
        action="store_true",
        help="also run the example echo upstream on upstream.url (for trying the sidecar out)",
    )
    command(
        commands, "check-config", "validate the config and print it resolved, secrets masked",
        _check_config,
    )  # fmt: skip
    token = command(commands, "token", "mint a development JWT signed with auth.jwt.secret", _token)
    token.add_argument("--sub", required=True, help="user id to put in the token")
    token.add_argument(
        "--ttl", type=_positive, default=1800, help="lifetime in seconds (default 1800)"
    )

    keys = commands.add_parser(
        "keys",
        help="operator actions on API keys, straight on Redis",
        description="Operator actions on API keys, straight on Redis, with the API's rules: "
        "the active-key limit, audit records, revocation reaching running sidecars at once.",
        epilog=EXIT_CODES,
    )
    actions = keys.add_subparsers(metavar="ACTION", required=True)
    create = command(actions, "create", "create a key for a user (prints it once)", _keys_create)
    create.add_argument("--user", required=True, help="the user id the key belongs to")
    create.add_argument("--description", help=f"free text, at most {MAX_DESCRIPTION} characters")
    create.add_argument(
        "--expires-at",
        metavar="WHEN",
        help="ISO 8601 date-time with a time zone, e.g. 2027-01-31T00:00:00Z (default: never); "
        "at least 60 s ahead, at most auth.api_keys.max_lifetime_days",
    )
    create.add_argument(
        "--environment", default=LIVE, help="live (default) or test (an sk_test_ key)"
    )
    _restriction_options(create)
    create.add_argument(
        "--canary",
        action="store_true",
        help="a trap: looks and verifies like a key, never authenticates, and logs a WARNING "
        "when used; outside the user's limit and listings",
    )
    listing = command(actions, "list", "list a user's keys, newest first", _keys_list)
    listing.add_argument("--user", required=True)
    listing.add_argument(
        "--include-expired", action="store_true", help="also list expired (revoked) keys"
    )
    listing.add_argument("--canary", action="store_true", help="list only the user's canary keys")
    revoke = command(actions, "revoke", "expire a key by id, whoever owns it", _keys_revoke)
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (a UUID)")
    rotate = command(
        actions,
        "rotate",
        "replace a key by a new one (prints it once); the old one works for a grace period",
        _keys_rotate,
    )
    rotate.add_argument("key_id", metavar="KEY_ID", help="the key's id (a UUID)")
    rotate.add_argument(
        "--grace-period",
        metavar="SECONDS",
        default=str(DEFAULT_GRACE_SECONDS),
        help=f"how long the old key keeps working, 0 to {MAX_GRACE_SECONDS} "
        f"(default {DEFAULT_GRACE_SECONDS}); never past its own expiry",
    )
    update = command(
        actions,
        "update",
        "change a key's description, scopes or allowed addresses (as PATCH); the change "
        "reaches running sidecars at once",
        _keys_update,
    )
    update.add_argument("key_id", metavar="KEY_ID", help="the key's id (a UUID)")
    update.add_argument("--description", help=f"free text, at most {MAX_DESCRIPTION} characters")
    _restriction_options(update)
    for name, what in (
        ("description", "the description"),
        ("scopes", "the scopes (the key is unrestricted again)"),
        ("allowed-ips", "the allowed addresses (any address again)"),
    ):
        update.add_argument(f"--clear-{name}", action="store_true", help=f"remove {what}")
    usage = command(
        actions, "usage", "a key's requests and 429s per UTC day, and its networks", _keys_usage
    )
    usage.add_argument("key_id", metavar="KEY_ID", help="the key's id (a UUID)")
    usage.add_argument(
        "--days",
        metavar="N",
        default=str(DEFAULT_USAGE_DAYS),
        help=f"days up to today, 1 to {MAX_USAGE_DAYS} (default {DEFAULT_USAGE_DAYS})",
    )
    audit = commands.add_parser(
        "audit",
        help="the audit trail of key changes",
        description="The audit trail of key changes (docs/security/audit.md).",
        epilog=EXIT_CODES,
    )
    audit_actions = audit.add_subparsers(metavar="ACTION", required=True)
    command(
        audit_actions, "verify", "check every event's hash and link (exit 1 names the first bad "
        "event)", _audit_verify,
    )  # fmt: skip
    export = command(
        audit_actions, "export", "print events as JSON lines, oldest first", _audit_export
    )
    export.add_argument("--since", metavar="WHEN", help="ISO 8601 date-time with a time zone")
    export.add_argument("--user", help="only the events of this user's keys")
    return parser


def _restriction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        metavar="SCOPE",
        help="limit the key to this scope of auth.scopes (repeat for more)",
    )
    parser.add_argument(
        "--allow-ip",
        dest="allowed_ips",
        action="append",
        metavar="CIDR",
        help="allow the key only from this address or network (repeat for more, up to 100)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("callcov-sidecar")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _workers(text: str) -> int:
    value = _positive(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be at most 64: {text}")
    return value


def _serve(config: Config, args: argparse.Namespace) -> int:
    from sidecar.server import run as server

    if args.workers is not None:
        server_settings = config.server.model_copy(update={"workers": args.workers})
        config = config.model_copy(update={"server": server_settings})
    return server.run(config, example_upstream=args.example_upstream)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_module.masked_dump(config), sort_keys=False), end="")
    return EXIT_OK


def _token(config: Config, args: argparse.Namespace) -> int:
    from sidecar.auth.jwt_auth import mint

    try:
        print(mint(config.auth.jwt, _user(args.sub), args.ttl))
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    return EXIT_OK


def _user(value: str) -> str:
    # The same rule as the HTTP API applies to a JWT's user id.
    if not valid_user_id(value):
        raise _Usage(USER_ID_RULE)
    return value


def _keys_create(config: Config, args: argparse.Namespace) -> int:
    user = _user(args.user)
    if args.description is not None and len(args.description) > MAX_DESCRIPTION:
        raise _Usage(f"--description is longer than {MAX_DESCRIPTION} characters")
    if args.canary and (args.expires_at is not None or args.environment != LIVE):
        raise _Usage("a --canary key is a live key that never expires")

    if args.canary and (args.scopes or args.allowed_ips):
        raise _Usage("a --canary key has no scopes or allowed addresses")
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


def _keys_list(config: Config, args: argparse.Namespace) -> int:
    user = _user(args.user)

    async def action(store: Any) -> Any:
        listing = store.list_canaries if args.canary else store.list_keys
        return key_list_json(await listing(user, args.include_expired))

    return _with_store(config, action)


def _key_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _Usage(f"KEY_ID must be a UUID, got {text!r}") from None


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
        raise _Usage("; ".join(problems)) from None


def _whole_number(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Usage(f"{option}: not a whole number: {text!r}") from None


def _keys_rotate(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    grace = _whole_number(args.grace_period, "--grace-period")
    body = _validated(RotateKeyBody, {"grace_period_seconds": grace})

    async def action(store: Any) -> Any:
        created, _ = await store.rotate(key_id, None, body.grace_period_seconds)
        return {**created.as_json(), "rotated_from": key_id}

    return _with_store(config, action)


def _keys_update(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    values: dict[str, Any] = {}
    for name in ("description", "scopes", "allowed_ips"):
        given, clear = getattr(args, name), getattr(args, f"clear_{name}")
        if given is not None and clear:
            raise _Usage(f"{_OPTIONS[name]} and --clear-{name.replace('_', '-')} together")
        if given is not None or clear:
            values[name] = given
    if not values:
        raise _Usage("nothing to change: give --description, --scope, --allow-ip or a --clear-")
    body = _validated(UpdateKeyBody, values, context={"scopes": frozenset(config.auth.scopes)})
    changes = {
        name: _tuple(v) if isinstance(v := getattr(body, name), list) else v for name in values
    }

    async def action(store: Any) -> Any:
        return (await store.update(key_id, None, **changes))[0]

    return _with_store(config, action)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def _keys_usage(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)
    try:
        days = USAGE_DAYS.validate_python(_whole_number(args.days, "--days"))
    except ValidationError as exc:
        raise _Usage(f"--days: {exc.errors()[0]['msg']}") from None

    async def action(store: Any) -> Any:
        prefix, daily, networks = await store.usage(key_id, None, usage_window(days))
        return usage_json(key_id, prefix, daily, networks)

    return _with_store(config, action)


def _keys_revoke(config: Config, args: argparse.Namespace) -> int:
    key_id = _key_id(args.key_id)

    async def action(store: Any) -> Any:
        await store.revoke(key_id, None)
        return expired_json()

    return _with_store(config, action)


def _audit_verify(config: Config, args: argparse.Namespace) -> int:
    from sidecar import cli_audit

    return _with_redis(config, lambda redis, url: cli_audit.verify(redis, config))


def _audit_export(config: Config, args: argparse.Namespace) -> int:
    from sidecar import cli_audit
    from sidecar.core.timeutil import parse_iso

    since = None
    if args.since is not None:
        try:
            since = parse_iso(args.since)
        except ValueError:
            raise _Usage(f"--since: not an ISO 8601 date-time: {args.since!r}") from None
        if since.tzinfo is None:
            raise _Usage("--since: give a time zone, e.g. 2027-01-31T00:00:00Z")
    user = None if args.user is None else _user(args.user)
    return _with_redis(config, lambda redis, url: cli_audit.export(redis, since, user))


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

    return _with_redis(config, use)


def _with_redis(config: Config, use: Callable[[Any, str], Awaitable[int]]) -> int:
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
