"""``callcov-sidecar``: serve, check-config, keys (operator actions, cli_keys.py),
audit (cli_audit.py), token.

Exit codes: 0 success; 1 runtime failure (a port in use, Redis unreachable for an
operator command, an unknown key id, the key limit reached, ...); 2 usage error or
invalid configuration (nothing was started).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

import yaml

from sidecar.cli import keys as cli_keys
from sidecar.cli.keys import UsageError, user_id
from sidecar.config import loading as config_module
from sidecar.config.model import Config, ConfigError
from sidecar.core.domain import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_USAGE_DAYS,
    LIVE,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
)
from sidecar.core.errors import EXIT_OK, EXIT_USAGE

DEFAULT_CONFIG = "config/sidecar.yaml"
EXIT_CODES = "exit codes: 0 ok, 1 runtime failure, 2 usage error or invalid configuration"


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
    except UsageError as exc:
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
    create = command(actions, "create", "create a key for a user (prints it once)", cli_keys.create)
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
    listing = command(actions, "list", "list a user's keys, newest first", cli_keys.list_keys)
    listing.add_argument("--user", required=True)
    listing.add_argument(
        "--include-expired", action="store_true", help="also list expired (revoked) keys"
    )
    listing.add_argument("--canary", action="store_true", help="list only the user's canary keys")
    revoke = command(actions, "revoke", "expire a key by id, whoever owns it", cli_keys.revoke)
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id (a UUID)")
    rotate = command(
        actions,
        "rotate",
        "replace a key by a new one (prints it once); the old one works for a grace period",
        cli_keys.rotate,
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
        cli_keys.update,
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
        actions, "usage", "a key's requests and 429s per UTC day, and its networks", cli_keys.usage
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
        print(mint(config.auth.jwt, user_id(args.sub), args.ttl))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def _audit_verify(config: Config, args: argparse.Namespace) -> int:
    from sidecar.cli import audit as cli_audit

    return cli_keys.with_redis(config, lambda redis, url: cli_audit.verify(redis, config))


def _audit_export(config: Config, args: argparse.Namespace) -> int:
    from sidecar.cli import audit as cli_audit
    from sidecar.core.timeutil import parse_iso

    since = None
    if args.since is not None:
        try:
            since = parse_iso(args.since)
        except ValueError:
            raise UsageError(f"--since: not an ISO 8601 date-time: {args.since!r}") from None
        if since.tzinfo is None:  # a date, or a time without a zone: UTC, as events are
            since = since.replace(tzinfo=UTC)
    user = None if args.user is None else user_id(args.user)
    return cli_keys.with_redis(config, lambda redis, url: cli_audit.export(redis, since, user))
