"""The configuration's models: one immutable pydantic model per YAML section, with the
rules a single field carries (cross-field rules are in checks.py). Secrets are
``SecretStr`` and print masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

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
    # Read timeouts on every listener, as nginx's client_header_timeout (the whole head),
    # client_body_timeout (between two reads of a body) and keepalive_timeout.
    client_header_timeout_seconds: PositiveSeconds = 60.0
    client_body_timeout_seconds: PositiveSeconds = 60.0
    keepalive_timeout_seconds: PositiveSeconds = 5.0


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


# A scope's name (SPEC Part 3, "Scoped keys"): what keys carry and clients see.
SCOPE_NAME = r"^[a-z][a-z0-9_.:-]{0,63}$"


class ScopeRule(_Section):
    """One rule of a scope: these methods on these prefixes of the normalised path."""

    # Empty lists and unnormalised paths are reported by checks.py, in words.
    methods: tuple[Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_-]*$")], ...]
    paths: tuple[Annotated[str, Field(pattern=r"^/")], ...]


class AuthConfig(_Section):
    jwt: JwtConfig = JwtConfig()
    api_keys: ApiKeysConfig
    public_paths: tuple[str, ...] = ()
    mode: Literal["enforce", "report"] = "enforce"
    report_only_paths: tuple[str, ...] = ()
    failed_auth: FailedAuthConfig = FailedAuthConfig()
    scopes: dict[str, tuple[ScopeRule, ...]] = {}


class IdentityHeaders(_Section):
    user_id: str = Field("X-CallCov-User-Id", pattern=r"^[A-Za-z0-9-]+$")
    auth_method: str = Field("X-CallCov-Auth-Method", pattern=r"^[A-Za-z0-9-]+$")
    key_id: str = Field("X-CallCov-Key-Id", pattern=r"^[A-Za-z0-9-]+$")
    environment: str = Field("X-CallCov-Key-Environment", pattern=r"^[A-Za-z0-9-]+$")
    scopes: str = Field("X-CallCov-Key-Scopes", pattern=r"^[A-Za-z0-9-]+$")


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
    # Where the original request is read: one dialect, never a fallback to another's headers.
    dialect: Literal["nginx", "forwarded", "envoy"] = "nginx"


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
    # Reports are unauthenticated until their whole body is read and verified: at most
    # this many are read at once (per process), each within the timeout.
    max_concurrent_reports: int = Field(4, ge=1, le=1000)
    body_timeout_seconds: PositiveSeconds = 10.0


class AuditConfig(_Section):
    retention_days: int = Field(400, ge=1, le=36500)
    # None: derived from auth.api_keys.hash_secret (keys/audit_events.py).
    hmac_secret: SecretStr | None = None


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True


class ConsoleConfig(_Section):
    """The API Keys page (api/console.py), off by default."""

    enabled: bool = False
    path: str = Field("/console/", pattern=r"^/")
    login_url: str = Field("/api/v1/auth/login", pattern=r"^/")
    refresh_url: str = Field("/api/v1/auth/refresh", pattern=r"^/")


class TracingConfig(_Section):
    """OpenTelemetry traces over OTLP/HTTP (observability/tracing.py), off by default."""

    enabled: bool = False
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = Field("callcov-sidecar", min_length=1, max_length=256)
    sample_ratio: float = Field(0.01, ge=0, le=1)


class ExampleUpstreamConfig(_Section):
    """Read only by ``serve --example-upstream``: the demo user its login answers for."""

    demo_email: str | None = Field(None, min_length=3, max_length=254)
    demo_password: SecretStr | None = None
    demo_user_id: str = Field("demo-user", pattern=r"^[\x21-\x7e]{1,256}$")
    demo_token_seconds: int = Field(900, ge=1, le=86400)


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
    console: ConsoleConfig = ConsoleConfig()
    tracing: TracingConfig = TracingConfig()
    audit: AuditConfig = AuditConfig()
    example_upstream: ExampleUpstreamConfig = ExampleUpstreamConfig()


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
