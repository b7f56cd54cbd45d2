"""Config validation: exact messages by YAML path, all at once; the reference and the
examples kept in sync with the models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from sidecar.config import loading as config
from sidecar.config.loading import masked_dump
from sidecar.config.model import Config, ConfigError, mask_url
from tests.harness import HASH_SECRET, JWT_SECRET, base_config, merge

ROOT = Path(__file__).resolve().parent.parent
VALID = base_config(redis_url="redis://127.0.0.1:6379/0", upstream_url="http://127.0.0.1:9000")


def problems(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(raw, env or {})
    return caught.value.problems


def with_(**override: Any) -> dict[str, Any]:
    return merge(VALID, override)


FIVE_MISTAKES = """
server: {host: 0.0.0.0, port: 70000}
admin: {port: 9090}
upstream: {url: "ftp://backend", read_timout_seconds: 5}
redis: {url: "redis://cache:6379/zero"}
auth:
  jwt: {algorithms: [HS256], secret: "${CALLCOV_JWT_SECRET}"}
  api_keys: {hash_secret: "0123456789abcdef0123456789abcdef"}
"""


def test_five_mistakes_are_all_reported_at_once_by_path() -> None:
    assert problems(yaml.safe_load(FIVE_MISTAKES)) == [
        "auth.jwt.secret: environment variable CALLCOV_JWT_SECRET is not set",
        "redis.url: the database must be a number, as in redis://host:6379/0",
        "server.port: must be less than or equal to 65535",
        "upstream.read_timout_seconds: unknown key (did you mean read_timeout_seconds?)",
        "upstream.url: must be an http:// or https:// URL with a host",
    ]


def test_the_valid_base_config_parses() -> None:
    parsed = config.parse(VALID, {})
    assert parsed.server.port == VALID["server"]["port"]
    assert parsed.auth.api_keys.hash_secret.get_secret_value() == HASH_SECRET


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown key (did you mean port?)"),
        ({"surver": {}}, "surver: unknown key (did you mean server?)"),
        ({"server": {"workers": 0}}, "server.workers: must be greater than or equal to 1"),
        ({"server": {"workers": "two"}},
         "server.workers: must be a valid integer, unable to parse string as an integer"),
        ({"server": {"graceful_timeout_seconds": 0}},
         "server.graceful_timeout_seconds: must be greater than 0"),
        ({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}},
         "server.trusted_proxies[1]: not an IP address or CIDR: proxy.local"),
        ({"upstream": {"connect_timeout_seconds": -1}},
         "upstream.connect_timeout_seconds: must be greater than 0"),
        ({"upstream": {"url": None}}, "upstream.url: must be a valid string"),
        ({"redis": {"url": "http://cache"}},
         "redis.url: must be 'embedded' or a redis://, rediss://, unix://, "
         "redis+sentinel:// or redis+cluster:// URL"),
        ({"redis": {"url": "redis://cache:port/0"}},
         "redis.url: port must be a number from 0 to 65535"),
        ({"redis": {"url": "redis+sentinel://s1:26379,s2:x/mymaster"}},
         "redis.url: port must be a number from 0 to 65535"),
        ({"redis": {"url": "redis:///0"}}, "redis.url: needs a host, as in redis://host:6379/0"),
        ({"redis": {"url": "redis://cache:6379/0?ssl_cert_reqs=required"}},
         "redis.url: ssl_cert_reqs needs a TLS URL (rediss:// or rediss+cluster://)"),
        ({"redis": {"url": "unix://"}}, "redis.url: a unix:// URL needs the socket path"),
        ({"redis": {"socket_timeout_seconds": 0}},
         "redis.socket_timeout_seconds: must be greater than 0"),
        ({"admin": {"port": 8080}, "server": {"port": 8080}},
         "admin.port: must differ from server.port (the admin listener is separate)"),
        ({"auth": {"jwt": {"secret": None}}},
         "auth.jwt.secret: required when an HS* algorithm is allowed"),
        ({"auth": {"jwt": {"algorithms": ["RS256"], "secret": None}}},
         "auth.jwt: RS*/ES*/PS*/EdDSA algorithms need public_key_file or jwks_url"),
        ({"auth": {"jwt": {"algorithms": ["HS256", "RS256"], "jwks_url": "https://idp/jwks"}}},
         "auth.jwt.algorithms: mixing HS* with RS*/ES* algorithms invites algorithm "
         "confusion; allow one family"),
        ({"auth": {"jwt": {"algorithms": []}}},
         "auth.jwt.algorithms: must list at least one algorithm"),
        ({"auth": {"jwt": {"algorithms": ["none"]}}},
         "auth.jwt.algorithms[0]: must be 'HS256', 'HS384', 'HS512', 'RS256', 'RS384', "
         "'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512' or 'EdDSA'"),
        ({"auth": {"jwt": {"algorithms": ["ES256"], "public_key_file": "/nonexistent.pem"}}},
         "auth.jwt.public_key_file: no such file: /nonexistent.pem"),
        ({"auth": {"jwt": {"jwks_url": "ftp://idp/jwks"}}},
         "auth.jwt.jwks_url: must be an http(s) URL"),
        ({"auth": {"api_keys": {"hash_secret": None}}},
         "auth.api_keys.hash_secret: must be a valid string"),
        ({"auth": {"api_keys": {"max_active_per_user": 0}}},
         "auth.api_keys.max_active_per_user: must be greater than or equal to 1"),
        ({"auth": {"public_paths": ["api/v1/auth/"]}},
         "auth.public_paths[0]: must be a path starting with /"),
        ({"auth": {"public_paths": ["/API/v1/api-keys/"]}},
         "auth.public_paths[0]: would make /API/v1/api-keys/ unauthenticated"),
        ({"auth": {"public_paths": ["/api//v1/./api-keys"]}},
         "auth.public_paths[0]: would make /api//v1/./api-keys unauthenticated"),
        ({"auth": {"public_paths": ["/"]}},
         "auth.public_paths[0]: / is matched as / and would make every path unauthenticated"),
        ({"auth": {"public_paths": ["//"]}},
         "auth.public_paths[0]: // is matched as / and would make every path unauthenticated"),
        ({"auth": {"public_paths": ["/public/.."]}},
         "auth.public_paths[0]: /public/.. is matched as / and would make every path "
         "unauthenticated"),
        ({"auth": {"public_paths": ["/api/v1/auth/", "/\\"]}},
         "auth.public_paths[1]: /\\ is matched as / and would make every path unauthenticated"),
        ({"identity": {"headers": {"user_id": "X User"}}},
         "identity.headers.user_id: must match pattern '^[A-Za-z0-9-]+$'"),
        ({"logging": {"level": "TRACE"}},
         "logging.level: must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)  # fmt: skip
def test_each_rule_has_an_exact_message(override: dict[str, Any], expected: str) -> None:
    assert problems(with_(**override)) == [expected]


def test_a_required_key_is_named() -> None:
    raw = {k: v for k, v in VALID.items() if k != "upstream"}
    assert problems(raw) == ["upstream: required"]


def test_a_root_that_is_not_a_mapping_is_rejected() -> None:
    assert problems(["server"]) == ["<root>: must be a mapping of sections"]


def test_an_unset_variable_is_the_only_problem_reported_at_its_path() -> None:
    raw = with_(auth={"jwt": {"secret": "${JWT_SECRET_FOR_TEST}"}})
    assert problems(raw) == ["auth.jwt.secret: environment variable JWT_SECRET_FOR_TEST is not set"]
    assert problems(raw, {"JWT_SECRET_FOR_TEST": ""}) == [
        "auth.jwt.secret: environment variable JWT_SECRET_FOR_TEST is empty"
    ]
    parsed = config.parse(raw, {"JWT_SECRET_FOR_TEST": JWT_SECRET})
    assert parsed.auth.jwt.secret is not None
    assert parsed.auth.jwt.secret.get_secret_value() == JWT_SECRET


def test_numbers_and_booleans_can_come_from_the_environment() -> None:
    raw = with_(server={"port": "${PORT}"}, upstream={"forward_authorization": "${FWD:-false}"})
    parsed = config.parse(raw, {"PORT": "8181"})
    assert parsed.server.port == 8181
    assert parsed.upstream.forward_authorization is False


def test_load_reports_an_unreadable_file_and_bad_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(missing)
    assert caught.value.problems == [f"<file>: cannot read {missing}: No such file or directory"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        config.load(broken)
    assert caught.value.problems[0].startswith("<file>: not valid YAML: ")


def test_the_error_text_lists_every_problem_on_its_own_line() -> None:
    error = ConfigError(["a.b: one", "c: two"])
    assert str(error) == "invalid configuration:\n  - a.b: one\n  - c: two"


# --- masking -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:hunter2@cache:6380/1?ssl_cert_reqs=required",
         "rediss://app:***@cache:6380/1?ssl_cert_reqs=required"),
        ("redis+sentinel://:hunter2@s1:26379,s2:26379/mymaster",
         "redis+sentinel://:***@s1:26379,s2:26379/mymaster"),
        ("redis://app@cache:6379/0", "redis://app@cache:6379/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("embedded", "embedded"),
        ("https://user:pw@api.internal/base", "https://user:***@api.internal/base"),
    ],
)  # fmt: skip
def test_passwords_in_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_secrets_never_print() -> None:
    raw = with_(redis={"url": "redis://:redis-password-1@cache:6379/0"})
    parsed = config.parse(raw, {})
    dumped = yaml.safe_dump(masked_dump(parsed))
    shown = [dumped, repr(parsed), str(parsed)]
    for text in shown:
        assert JWT_SECRET not in text
        assert HASH_SECRET not in text
        assert "redis-password-1" not in text
    assert masked_dump(parsed)["auth"]["jwt"]["secret"] == "***"
    assert masked_dump(parsed)["auth"]["api_keys"]["hash_secret"] == "***"
    assert masked_dump(parsed)["redis"]["url"] == "redis://:***@cache:6379/0"


# --- the reference and the examples ----------------------------------------------

_ROW = re.compile(r"^\| `([a-z_.\[\]]+)` \| [^|]+ \| ([^|]+) \|", re.MULTILINE)


def documented() -> dict[str, str]:
    text = (ROOT / "config" / "README.md").read_text()
    return {key: default.strip().strip("`") for key, default in _ROW.findall(text)}


def model_defaults(
    model: type[BaseModel], prefix: str = "", instance: Any = None
) -> dict[str, str]:
    """Every leaf key of the config (``a.b``, ``list[].key``) and its default, as written."""
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        default = getattr(instance, name) if instance is not None else field.default
        annotation = field.annotation
        section = next(
            (t for t in (annotation, *getattr(annotation, "__args__", ()))
             if isinstance(t, type) and issubclass(t, BaseModel)),
            None,
        )  # fmt: skip
        if section is None:
            found[path] = _render(default)
        elif annotation is section:
            nested = default if isinstance(default, BaseModel) else None
            found.update(model_defaults(section, path, nested))
        else:  # a list of sections
            found[path] = _render(default)
            found.update(model_defaults(section, path + "[]"))
    return found


def _render(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, SecretStr):
        return "***"
    return str(value)


def test_the_reference_documents_every_key_with_its_default() -> None:
    in_code, in_docs = model_defaults(Config), documented()
    missing = sorted(set(in_code) - set(in_docs))
    stale = sorted(set(in_docs) - set(in_code))
    assert not missing, f"keys missing from config/README.md: {missing}"
    assert not stale, f"config/README.md documents keys that do not exist: {stale}"
    wrong = {k: (in_docs[k], v) for k, v in in_code.items() if in_docs[k] != v}
    assert not wrong, f"defaults in config/README.md (documented, actual): {wrong}"


@pytest.mark.parametrize("name", ["sidecar.yaml", "docker.yaml"])
def test_the_example_configs_parse(name: str) -> None:
    env = {"CALLCOV_JWT_SECRET": JWT_SECRET, "CALLCOV_KEY_HASH_SECRET": HASH_SECRET}
    parsed = config.load(ROOT / "config" / name, env)
    assert parsed.rate_limits.rules[0].path == "/api/v1/analysis/"


def test_the_development_example_needs_no_environment() -> None:
    parsed = config.load(ROOT / "config" / "sidecar.yaml", {})
    assert parsed.redis.url == "embedded"


def test_the_example_holds_the_keys_the_spec_fixes() -> None:
    raw = yaml.safe_load((ROOT / "config" / "sidecar.yaml").read_text())
    assert raw["server"] == {"host": "127.0.0.1", "port": 8080}
    assert raw["admin"] == {"host": "127.0.0.1", "port": 9090}
    assert raw["auth"]["jwt"]["algorithms"] == ["HS256"]
    assert raw["auth"]["jwt"]["user_id_claim"] == "sub"
    assert raw["auth"]["api_keys"]["max_active_per_user"] == 10
    assert raw["auth"]["public_paths"] == ["/api/v1/auth/"]
    assert raw["identity"]["headers"] == {
        "user_id": "X-CallCov-User-Id",
        "auth_method": "X-CallCov-Auth-Method",
        "key_id": "X-CallCov-Key-Id",
    }
    assert raw["rate_limits"] == {
        "enabled": True,
        "default": {"requests": 100, "per_seconds": 60},
        "rules": [
            {"method": "POST", "path": "/api/v1/analysis/", "requests": 20, "per_seconds": 60}
        ],
    }


def test_a_public_path_is_checked_after_interpolation_and_normalisation() -> None:
    raw = with_(auth={"public_paths": ["${PUBLIC_ROOT}/", "${PUBLIC_ROOT}api/v1/auth/"]})
    assert problems(raw, {"PUBLIC_ROOT": "/"}) == [
        "auth.public_paths[0]: // is matched as / and would make every path unauthenticated"
    ]
