"""Rules that span fields or need more than a type: JWT algorithms and their keys,
URLs, listeners, path lists, scopes, secret scanning, the identity assertion and the
API Keys page (console.py). Each returns ``path: rule`` problems; all of them are reported at
once."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sidecar.config.console import console_problems
from sidecar.config.model import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, SCOPE_NAME
from sidecar.core.domain import KEYS_API_PATH
from sidecar.core.paths import matched_form, normalise
from sidecar.crypto import scanning_signatures as scanning_keys
from sidecar.crypto import signing_keys

_SCOPE_NAME = re.compile(SCOPE_NAME)


def get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def cross_field_problems(data: dict[str, Any]) -> list[str]:
    """Rules that span fields; tolerant of values pydantic has already rejected."""
    problems: list[str] = []
    jwt = get(data, "auth", "jwt") or {}
    algorithms = jwt.get("algorithms", ["HS256"]) if isinstance(jwt, dict) else []
    if isinstance(algorithms, list) and isinstance(jwt, dict):
        wanted = set(map(str, algorithms))
        if not wanted:
            problems.append("auth.jwt.algorithms: must list at least one algorithm")
        if wanted & HMAC_ALGORITHMS:
            secret = jwt.get("secret")
            if not secret:
                problems.append("auth.jwt.secret: required when an HS* algorithm is allowed")
            elif isinstance(secret, str) and len(secret.encode()) < 32:
                problems.append("auth.jwt.secret: must be at least 32 bytes for HS* algorithms")
            if wanted & ASYMMETRIC_ALGORITHMS:
                problems.append(
                    "auth.jwt.algorithms: mixing HS* with RS*/ES* algorithms invites "
                    "algorithm confusion; allow one family"
                )
        if wanted & ASYMMETRIC_ALGORITHMS and not (
            jwt.get("public_key_file") or jwt.get("jwks_url")
        ):
            problems.append(
                "auth.jwt: RS*/ES*/PS*/EdDSA algorithms need public_key_file or jwks_url"
            )
        key_file = jwt.get("public_key_file")
        if isinstance(key_file, str) and key_file and not Path(key_file).is_file():
            problems.append(f"auth.jwt.public_key_file: no such file: {key_file}")
    hash_secret = get(data, "auth", "api_keys", "hash_secret")
    if isinstance(hash_secret, str) and len(hash_secret.encode()) < 32:
        problems.append("auth.api_keys.hash_secret: must be at least 32 bytes")
    audit_secret = get(data, "audit", "hmac_secret")
    if isinstance(audit_secret, str) and len(audit_secret.encode()) < 32:
        problems.append("audit.hmac_secret: must be at least 32 bytes")
    problems.extend(_url_problems(data))
    problems.extend(_listener_problems(data))
    problems.extend(_path_list_problems(data))
    problems.extend(_scope_problems(data))
    problems.extend(_assertion_problems(data))
    problems.extend(_secret_scanning_problems(data))
    problems.extend(console_problems(get(data, "console"), get(data, "auth", "public_paths")))
    for i, proxy in enumerate(get(data, "server", "trusted_proxies") or []):
        try:
            ipaddress.ip_network(str(proxy), strict=False)
        except ValueError:
            problems.append(f"server.trusted_proxies[{i}]: not an IP address or CIDR: {proxy}")
    return problems


def _url_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name in ("url", "test_url"):
        upstream = get(data, "upstream", name)
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"upstream.{name}: must be an http:// or https:// URL with a host")
    redis_url = get(data, "redis", "url")
    if isinstance(redis_url, str) and redis_url != "embedded":
        problem = _redis_url_problem(redis_url)
        if problem is not None:
            problems.append(f"redis.url: {problem}")
    otlp = get(data, "tracing", "otlp_endpoint")
    if isinstance(otlp, str):
        parts = urlsplit(otlp)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("tracing.otlp_endpoint: must be an http:// or https:// URL with a host")
        elif parts.query or parts.fragment:
            problems.append("tracing.otlp_endpoint: must not carry a query or fragment")
    jwks = get(data, "auth", "jwt", "jwks_url")
    if isinstance(jwks, str) and jwks and urlsplit(jwks).scheme not in ("http", "https"):
        problems.append("auth.jwt.jwks_url: must be an http(s) URL")
    return problems


def _secret_scanning_problems(data: dict[str, Any]) -> list[str]:
    section = get(data, "secret_scanning")
    if not isinstance(section, dict):
        return []
    problems: list[str] = []
    key_file, url = section.get("public_keys_file"), section.get("public_keys_url")
    if section.get("enabled") is True and not (key_file or url):
        problems.append("secret_scanning: enabled needs public_keys_file or public_keys_url")
    if isinstance(key_file, str) and key_file:
        try:
            scanning_keys.parse(Path(key_file).read_bytes())
        except OSError as exc:
            problems.append(f"secret_scanning.public_keys_file: cannot read {key_file}: "
                            f"{exc.strerror}")  # fmt: skip
        except ValueError as exc:
            problems.append(f"secret_scanning.public_keys_file: {exc}")
    if isinstance(url, str) and url and urlsplit(url).scheme not in ("http", "https"):
        problems.append("secret_scanning.public_keys_url: must be an http(s) URL")
    path = section.get("path")
    if isinstance(path, str) and path.startswith("/"):
        if normalise(path) != path:
            problems.append(f"secret_scanning.path: not a normalised path: {path}")
        elif path.rstrip("/").lower().startswith("/api/v1/api-keys"):
            problems.append("secret_scanning.path: must not be under /api/v1/api-keys")
    return problems


_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")


def _redis_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        return (
            "must be 'embedded' or a redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// URL"
        )
    if parts.scheme == "unix":
        return None if parts.path else "a unix:// URL needs the socket path"
    nodes = parts.netloc.rpartition("@")[2].split(",")
    for node in nodes if parts.scheme == "redis+sentinel" else [parts.netloc]:
        node_parts = urlsplit(f"//{node}")
        try:
            node_parts.port  # noqa: B018 - parsing is the check
        except ValueError:
            return "port must be a number from 0 to 65535"
        if not node_parts.hostname:
            return "needs a host, as in redis://host:6379/0"
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        return "the database must be a number, as in redis://host:6379/0"
    tls_options = [name for name in parse_qs(parts.query) if name.startswith("ssl_")]
    if tls_options and parts.scheme in ("redis", "redis+cluster"):
        return f"{tls_options[0]} needs a TLS URL (rediss:// or rediss+cluster://)"
    return None


def _listener_problems(data: dict[str, Any]) -> list[str]:
    sections = {name: get(data, name) or {} for name in ("server", "admin", "forward_auth")}
    if not all(isinstance(section, dict) for section in sections.values()):
        return []
    defaults = {"server": 8080, "admin": 9090, "forward_auth": 8081}
    listeners = [("server", sections["server"]), ("admin", sections["admin"])]
    if sections["forward_auth"].get("enabled"):
        listeners.append(("forward_auth", sections["forward_auth"]))
    wildcard = {"0.0.0.0", "::", ""}
    problems: list[str] = []
    for i, (name, section) in enumerate(listeners):
        host, port = section.get("host", "127.0.0.1"), section.get("port", defaults[name])
        for other_name, other in listeners[:i]:
            other_host = other.get("host", "127.0.0.1")
            same_host = host == other_host or {host, other_host} & wildcard
            if same_host and str(port) == str(other.get("port", defaults[other_name])):
                problems.append(
                    f"{name}.port: must differ from {other_name}.port "
                    f"(the {name} listener is separate)"
                )
    return problems


def _path_list_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for i, path in enumerate(get(data, "auth", "public_paths") or []):
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"auth.public_paths[{i}]: must be a path starting with /")
            continue
        matched = matched_form(path)  # what the gateway will actually compare
        if matched == "":
            problems.append(
                f"auth.public_paths[{i}]: {path} is matched as / and would make every path "
                "unauthenticated"
            )
        elif matched == KEYS_API_PATH:
            problems.append(f"auth.public_paths[{i}]: would make {path} unauthenticated")
    for i, path in enumerate(get(data, "auth", "report_only_paths") or []):
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"auth.report_only_paths[{i}]: must be a path starting with /")
    return problems


def _scope_problems(data: dict[str, Any]) -> list[str]:
    scopes = get(data, "auth", "scopes")
    if not isinstance(scopes, dict):
        return []  # absent, or not a mapping: pydantic says so
    problems: list[str] = []
    for name, rules in scopes.items():
        where = f"auth.scopes.{name}"
        if not isinstance(name, str) or not _SCOPE_NAME.fullmatch(name):
            problems.append(f"{where}: a scope name must match {SCOPE_NAME}")
        if isinstance(rules, list) and not rules:
            problems.append(f"{where}: must list at least one rule")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if not isinstance(rule, dict):
                continue
            for part in ("methods", "paths"):
                if rule.get(part) == []:
                    problems.append(f"{where}[{i}].{part}: must list at least one")
            paths = rule.get("paths")
            for j, path in enumerate(paths if isinstance(paths, list) else []):
                if isinstance(path, str) and path.startswith("/") and normalise(path) != path:
                    problems.append(f"{where}[{i}].paths[{j}]: not a normalised path: {path}")
    return problems


def _assertion_problems(data: dict[str, Any]) -> list[str]:
    assertion = get(data, "identity", "assertion")
    if not isinstance(assertion, dict) or not assertion.get("enabled"):
        return []
    where = "identity.assertion"
    problems: list[str] = []
    key_file = assertion.get("private_key_file")
    algorithm = assertion.get("algorithm", "EdDSA")
    if not key_file:
        problems.append(f"{where}.private_key_file: required when assertions are enabled")
    elif isinstance(key_file, str) and algorithm in signing_keys.ALGORITHMS:
        problem = signing_keys.private_key_problem(key_file, algorithm)
        if problem is not None:
            problems.append(f"{where}.private_key_file: {problem}")
    previous = assertion.get("previous_public_key_files") or []
    for i, path in enumerate(previous if isinstance(previous, list) else []):
        problem = signing_keys.public_key_problem(str(path))
        if problem is not None:
            problems.append(f"{where}.previous_public_key_files[{i}]: {problem}")
    return problems
