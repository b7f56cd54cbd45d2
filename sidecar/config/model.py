"""The sidecar's configuration: one YAML file, validated all at once.

Every problem is reported together, each with its YAML path, before any port is
bound. Models are immutable; secrets are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sidecar.config.interpolate import interpolate
from sidecar.core.domain import KEYS_API_PATH
from sidecar.core.paths import matched_form, normalise
from sidecar.crypto import scanning_signatures as scanning_keys
from sidecar.crypto import signing_keys

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

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) else value


class RequestLimits(_Section):
    """nginx-like defaults (large_client_header_buffers 4 8k; Apache's 100 fields)."""

    header_line_bytes: int = Field(8 * 1024, ge=256, le=1024 * 1024)
    header_bytes: int = Field(32 * 1024, ge=1024, le=16 * MIB)
    headers: int = Field(100, ge=8, le=10_000)
    target_bytes: int = Field(8 * 1024, ge=256, le=1024 * 1024)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(500 * MIB, gt=0)
    graceful_timeout_seconds: float = Field(30.0, gt=0, le=86400)
    trusted_proxies: tuple[str, ...] = ()
    limits: RequestLimits = RequestLimits()
    reject_ambiguous_paths: bool = True
    max_websockets: int = Field(1000, ge=0, le=1_000_000)


class AdminConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 9090


class UpstreamConfig(_Section):
    url: str
    test_url: str | None = None
    connect_timeout_seconds: PositiveSeconds = 5.0
    read_timeout_seconds: PositiveSeconds = 60.0
    pool_size: int = Field(256, ge=1, le=10000)
    forward_authorization: bool = True

    def for_test_keys(self) -> UpstreamConfig | None:
        """Where test-key traffic goes when it has its own upstream: these settings at
        ``test_url``."""
        if self.test_url is None:
            return None
        return self.model_copy(update={"url": self.test_url, "test_url": None})


class RedisConfig(_Section):
    url: str = "embedded"
    embedded_dir: str = "./data/redis"
    socket_timeout_seconds: float = Field(1.0, gt=0, le=60)
    retry_after_seconds: int = Field(5, ge=1, le=3600)
    # None: 1 behind Sentinel (a failover must not undo an acknowledged write), else 0.
    min_replicas_acked: int | None = Field(None, ge=0, le=100)
    replication_timeout_seconds: float = Field(1.0, gt=0, le=60)
    max_connections: int = Field(32, ge=2, le=10_000)


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
    max_lifetime_days: int = Field(365, ge=1, le=36500)


class FailedAuthConfig(_Section):
    enabled: bool = False
    requests: int = Field(20, ge=1, le=1_000_000)
    per_seconds: float = Field(60.0, gt=0, le=86400)


class AuthConfig(_Section):
    jwt: JwtConfig = JwtConfig()
    api_keys: ApiKeysConfig
    public_paths: tuple[str, ...] = ()
    mode: Literal["enforce", "report"] = "enforce"
    report_only_paths: tuple[str, ...] = ()
    failed_auth: FailedAuthConfig = FailedAuthConfig()


class IdentityHeaders(_Section):
    user_id: str = Field("X-CallCov-User-Id", pattern=r"^[A-Za-z0-9-]+$")
    auth_method: str = Field("X-CallCov-Auth-Method", pattern=r"^[A-Za-z0-9-]+$")
    key_id: str = Field("X-CallCov-Key-Id", pattern=r"^[A-Za-z0-9-]+$")
    environment: str = Field("X-CallCov-Key-Environment", pattern=r"^[A-Za-z0-9-]+$")


class AssertionConfig(_Section):
    enabled: bool = False
    header: str = Field("X-CallCov-Identity", pattern=r"^[A-Za-z0-9-]+$")
    private_key_file: str | None = None
    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    key_id: str | None = Field(None, min_length=1, max_length=200)
    issuer: str = Field("callcov-sidecar", min_length=1)
    audience: str = Field("callcov-upstream", min_length=1)
    ttl_seconds: int = Field(60, ge=1, le=3600)
    previous_public_key_files: tuple[str, ...] = ()


class IdentityConfig(_Section):
    headers: IdentityHeaders = IdentityHeaders()
    assertion: AssertionConfig = AssertionConfig()


class ForwardAuthConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 8081
    path_prefix: str | None = Field(None, pattern=r"^/")
    cache_seconds: int = Field(0, ge=0, le=86400)


class RateLimit(_Section):
    requests: int = Field(ge=1, le=1_000_000)
    per_seconds: float = Field(gt=0, le=86400)


class RateRule(RateLimit):
    method: str | None = Field(None, pattern=r"^[A-Z]+$")
    path: str = Field(pattern=r"^/")
    name: str | None = Field(None, pattern=r"^[\x20-\x7e]{1,100}$")


class RateLimitsConfig(_Section):
    enabled: bool = True
    fail_open: bool = True
    default: RateLimit = RateLimit(requests=100, per_seconds=60)
    rules: tuple[RateRule, ...] = ()
    headers: Literal["x-ratelimit", "ietf", "both"] = "x-ratelimit"


class SecretScanningConfig(_Section):
    enabled: bool = False
    path: str = Field("/api/v1/secret-scanning/", pattern=r"^/")
    public_keys_file: str | None = None
    public_keys_url: str | None = None


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
    forward_auth: ForwardAuthConfig = ForwardAuthConfig()
    secret_scanning: SecretScanningConfig = SecretScanningConfig()
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
    env_problems: list[str] = []
    data = interpolate(raw, env, problems=env_problems)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors(include_url=False))
    problems.extend(_cross_field_problems(data))
    # A missing variable is the one mistake at its path; what its empty value breaks is noise.
    unset = {problem.partition(": ")[0] for problem in env_problems}
    problems = env_problems + [p for p in problems if p.partition(": ")[0] not in unset]
    if problems:
        raise ConfigError(sorted(dict.fromkeys(problems)))
    assert config is not None
    return config


def _describe(error: Any) -> str:
    path = ""
    model: Any = Config
    parent: Any = None
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if isinstance(part, str):
            parent, model = model, _section_type(model, part)
    message = error["msg"].replace("Input should be", "must be").replace("String should", "must")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        known = list(getattr(parent, "model_fields", {}))
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
    elif error["type"] == "missing":
        message = "required"
    return f"{path or '<root>'}: {message}"


def _section_type(model: Any, name: str) -> Any:
    """The model class of field ``name`` in ``model`` (through tuples), else None."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


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
    problems.extend(_listener_problems(data))
    problems.extend(_path_list_problems(data))
    problems.extend(_assertion_problems(data))
    problems.extend(_secret_scanning_problems(data))
    for i, proxy in enumerate(_get(data, "server", "trusted_proxies") or []):
        try:
            ipaddress.ip_network(str(proxy), strict=False)
        except ValueError:
            problems.append(f"server.trusted_proxies[{i}]: not an IP address or CIDR: {proxy}")
    return problems


def _url_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name in ("url", "test_url"):
        upstream = _get(data, "upstream", name)
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"upstream.{name}: must be an http:// or https:// URL with a host")
    redis_url = _get(data, "redis", "url")
    if isinstance(redis_url, str) and redis_url != "embedded":
        problem = _redis_url_problem(redis_url)
        if problem is not None:
            problems.append(f"redis.url: {problem}")
    jwks = _get(data, "auth", "jwt", "jwks_url")
    if isinstance(jwks, str) and jwks and urlsplit(jwks).scheme not in ("http", "https"):
        problems.append("auth.jwt.jwks_url: must be an http(s) URL")
    return problems


def _secret_scanning_problems(data: dict[str, Any]) -> list[str]:
    section = _get(data, "secret_scanning")
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
    sections = {name: _get(data, name) or {} for name in ("server", "admin", "forward_auth")}
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
    for i, path in enumerate(_get(data, "auth", "public_paths") or []):
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
    for i, path in enumerate(_get(data, "auth", "report_only_paths") or []):
        if not isinstance(path, str) or not path.startswith("/"):
            problems.append(f"auth.report_only_paths[{i}]: must be a path starting with /")
    return problems


def _assertion_problems(data: dict[str, Any]) -> list[str]:
    assertion = _get(data, "identity", "assertion")
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


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (other strings unchanged)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    if not at or not password:
        return url
    return f"{scheme}://{user}:***@{hosts}{slash}{tail}"


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
    if isinstance(node, str):
        return mask_url(node)
    return node
