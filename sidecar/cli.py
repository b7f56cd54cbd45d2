"""``callcov-sidecar``: serve, check-config, keys (operator actions), token.

Exit codes: 0 success; 1 runtime failure (Redis unreachable for an operator
command, port in use, ...); 2 usage error or invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import yaml

from sidecar import config as config_module
from sidecar.config import Config, ConfigError

T = TypeVar("T")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "config/sidecar.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    path = args.config or os.environ.get("SIDECAR_CONFIG") or DEFAULT_CONFIG
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Callable[[Config, argparse.Namespace], int] = args.handler
    return handler(config, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callcov-sidecar",
        description="API-key authentication sidecar for the CallCov API.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage error or invalid config.",
    )
    parser.add_argument(
        "--config",
        help=f"YAML config file (default: $SIDECAR_CONFIG, else {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    serve.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
    serve.add_argument(
        "--example-upstream",
        action="store_true",
        help="also run the example echo upstream on upstream.url (for trying the sidecar out)",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="validate the config and print it, masked")
    check.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    check.set_defaults(handler=_check_config)

    token = commands.add_parser("token", help="mint a development JWT with the configured secret")
    token.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    token.add_argument("--sub", required=True, help="user id to put in the token")
    token.add_argument("--ttl", type=int, default=1800, help="lifetime in seconds (default 1800)")
    token.set_defaults(handler=_token)

    keys = commands.add_parser("keys", help="operator actions on API keys, straight on Redis")
    key_commands = keys.add_subparsers(metavar="ACTION", required=True)
    create = key_commands.add_parser("create", help="create a key for a user (prints it once)")
    create.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    create.add_argument("--user", required=True)
    create.add_argument("--description")
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", help="list a user's keys")
    listing.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    listing.add_argument("--user", required=True)
    listing.add_argument("--include-expired", action="store_true")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser("revoke", help="expire a key by id (any user)")
    revoke.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)
    return parser


def _serve(config: Config, args: argparse.Namespace) -> int:
    from sidecar import server

    if args.workers is not None:
        server_settings = config.server.model_copy(update={"workers": args.workers})
        config = config.model_copy(update={"server": server_settings})
    return server.run(config, example_upstream=args.example_upstream)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    print(yaml.safe_dump(config_module.masked_dump(config), sort_keys=False), end="")
    return EXIT_OK


def _token(config: Config, args: argparse.Namespace) -> int:
    from sidecar.jwt_auth import mint

    try:
        print(mint(config.auth.jwt, args.sub, args.ttl))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _keys_create(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Any) -> Any:
        created = await store.create(args.user, args.description)
        return {
            "id": created.id,
            "api_key": created.api_key,
            "key_prefix": created.key_prefix,
            "description": created.description,
            "created_at": created.created_at,
        }

    return _with_store(config, action)


def _keys_list(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Any) -> Any:
        keys = await store.list(args.user, args.include_expired)
        return {"api_keys": keys, "total": len(keys)}

    return _with_store(config, action)


def _keys_revoke(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Any) -> Any:
        await store.revoke(args.key_id, None)
        return {"message": "API key expired successfully", "success": True}

    return _with_store(config, action)


def _with_store(config: Config, action: Callable[[Any], Awaitable[Any]]) -> int:
    from sidecar.errors import SidecarError
    from sidecar.keyhash import KeyHasher
    from sidecar.redis_conn import connect
    from sidecar.server import resolve_redis_url
    from sidecar.store import KeyStore

    url, embedded = resolve_redis_url(config, share=True)

    async def run() -> Any:
        redis = connect(url, config.redis)
        secret = config.auth.api_keys.hash_secret.get_secret_value().encode()
        store = KeyStore(redis, KeyHasher(secret), config.auth.api_keys.max_active_per_user)
        try:
            return await action(store)
        finally:
            await redis.aclose()

    try:
        result = asyncio.run(run())
    except SidecarError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if embedded is not None:
            embedded.stop()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK
