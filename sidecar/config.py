"""The sidecar's configuration: one YAML file, validated all at once.

Every problem is reported together, each with its YAML path, before any port is
bound. Models are immutable; secrets are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sidecar.interpolate import interpolate

MIB = 1024 * 1024
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
]  # fmt: skip
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86400)]


class ConfigError(Exception):
    """Invalid configuration; ``problems`` lists every ``path: rule`` found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(500 * MIB, gt=0)
    graceful_timeout_seconds: float = Field(30.0, gt=0, le=86400)
    trusted_proxies: tuple[str, ...] = ()


class AdminConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 9090


class UpstreamConfig(_Section):
    url: str
    connect_timeout_seconds: PositiveSeconds = 5.0
    read_timeout_seconds: PositiveSeconds = 60.0
    pool_size: int = Field(256, ge=1, le=10000)
    forward_authorization: bool = True


class RedisConfig(_Section):
    url: str = "embedded"
    embedded_dir: str = "./data/redis"
    socket_timeout_seconds: float = Field(1.0, gt=0, le=60)
    retry_after_seconds: int = Field(5, ge=1, le=3600)


class JwtConfig(_Section):
    algorithms: tuple[Algorithm, ...] = ("HS256",)
    secret: SecretStr | None = None
    public_key_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    user_id_claim: str = Field("sub", min_length=1)
    leeway_seconds: float = Field(0.0, ge=0, le=300)


class ApiKeysConfig(_Section):
    max_active_per_user: int = Field(10, ge=1, le=1000)
    hash_secret: SecretStr
    cache_ttl_seconds: float = Field(60.0, gt=0, le=3600)
    cache_max_entries: int = Field(100_000, ge=1)
    negative_cache_ttl_seconds: float = Field(5.0, ge=0, le=3600)
    stale_window_seconds: float = Field(30.0, ge=0, le=3600)
    last_used_flush_seconds: float = Field(60.0, gt=0, le=3600)


class AuthConfig(_Section):
    jwt: JwtConfig = JwtConfig()
    api_keys: ApiKeysConfig
    public_paths: tuple[str, ...] = ()


class IdentityHeaders(_Section):
    user_id: str = Field("X-CallCov-User-Id", pattern=r"^[A-Za-z0-9-]+$")
    auth_method: str = Field("X-CallCov-Auth-Method", pattern=r"^[A-Za-z0-9-]+$")
    key_id: str = Field("X-CallCov-Key-Id", pattern=r"^[A-Za-z0-9-]+$")


class IdentityConfig(_Section):
    headers: IdentityHeaders = IdentityHeaders()


class RateLimit(_Section):
    requests: int = Field(ge=1, le=1_000_000)
    per_seconds: float = Field(gt=0, le=86400)


class RateRule(RateLimit):
    method: str | None = Field(None, pattern=r"^[A-Z]+$")
    path: str = Field(pattern=r"^/")


class RateLimitsConfig(_Section):
    enabled: bool = True
    fail_open: bool = True
    default: RateLimit = RateLimit(requests=100, per_seconds=60)
    rules: tuple[RateRule, ...] = ()


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True


class Config(_Section):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    upstream: UpstreamConfig
    redis: RedisConfig = RedisConfig()
    auth: AuthConfig
    identity: IdentityConfig = IdentityConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    logging: LoggingConfig = LoggingConfig()


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML file at ``path``; raise ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<file>: not valid YAML: {exc}"]) from exc
    return parse(raw if raw is not None else {}, os.environ if env is None else env)


def parse(raw: Any, env: Mapping[str, str]) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: must be a mapping of sections"])
    problems: list[str] = []
    data = interpolate(raw, env, problems=problems)
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors(include_url=False))
    problems.extend(_cross_field_problems(data))
    if problems:
        raise ConfigError(sorted(dict.fromkeys(problems)))
    assert config is not None
    return config


def _describe(error: Any) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required"
    return f"{path or '<root>'}: {message}"


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _cross_field_problems(data: dict[str, Any]) -> list[str]:
    """Rules that span fields; tolerant of values pydantic has already rejected."""
    problems: list[str] = []
    jwt = _get(data, "auth", "jwt") or {}
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
    hash_secret = _get(data, "auth", "api_keys", "hash_secret")
    if isinstance(hash_secret, str) and len(hash_secret.encode()) < 32:
        problems.append("auth.api_keys.hash_secret: must be at least 32 bytes")
    problems.extend(_url_problems(data))
    for i, path in enumerate(_get(data, "auth", "public_paths") or []):
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"auth.public_paths[{i}]: must be a path starting with /")
        elif path.rstrip("/").lower() == "/api/v1/api-keys" or path == "/":
            problems.append(f"auth.public_paths[{i}]: would make {path} unauthenticated")
    for i, proxy in enumerate(_get(data, "server", "trusted_proxies") or []):
        try:
            ipaddress.ip_network(str(proxy), strict=False)
        except ValueError:
            problems.append(f"server.trusted_proxies[{i}]: not an IP address or CIDR: {proxy}")
    return problems


def _url_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    upstream = _get(data, "upstream", "url")
    if isinstance(upstream, str):
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("upstream.url: must be an http:// or https:// URL with a host")
    redis_url = _get(data, "redis", "url")
    if isinstance(redis_url, str) and redis_url != "embedded":
        scheme = urlsplit(redis_url).scheme
        if scheme not in (
            "redis",
            "rediss",
            "unix",
            "redis+sentinel",
            "redis+cluster",
            "rediss+cluster",
        ):
            problems.append(
                "redis.url: must be 'embedded' or a redis://, rediss://, unix://, "
                "redis+sentinel:// or redis+cluster:// URL"
            )
    jwks = _get(data, "auth", "jwt", "jwks_url")
    if isinstance(jwks, str) and jwks and urlsplit(jwks).scheme not in ("http", "https"):
        problems.append("auth.jwt.jwks_url: must be an http(s) URL")
    return problems


def masked_dump(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets replaced by ``***``."""
    masked: dict[str, Any] = _mask(config.model_dump(mode="python"))
    return masked


def _mask(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _mask(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_mask(v) for v in node]
    if isinstance(node, SecretStr):
        return "***"
    return node
