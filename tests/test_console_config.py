"""The ``console`` section and the example upstream's demo user: defaults, and every
mistake reported by its YAML path (config/console.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import loading as config
from sidecar.config.loading import masked_dump
from sidecar.config.model import ConfigError
from tests.harness import base_config, merge

ROOT = Path(__file__).resolve().parent.parent
VALID = base_config(redis_url="redis://127.0.0.1:6379/0", upstream_url="http://127.0.0.1:9000")


def problems(**override: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(merge(VALID, override), {})
    return caught.value.problems


def test_the_page_is_off_by_default_with_the_spec_urls() -> None:
    console = config.parse(VALID, {}).console
    assert (console.enabled, console.path) == (False, "/console/")
    assert (console.login_url, console.refresh_url) == (
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
    )


def test_the_example_config_turns_it_on_with_a_demo_user() -> None:
    parsed = config.load(ROOT / "config" / "sidecar.yaml", env={})
    assert parsed.console.enabled
    assert parsed.example_upstream.demo_email == "demo@callcov.example"
    assert masked_dump(parsed)["example_upstream"]["demo_password"] == "***"


@pytest.mark.parametrize(
    ("console", "expected"),
    [
        ({"path": "console/"}, "console.path: must match pattern '^/'"),
        ({"path": "/console"}, "console.path: must be a normalised path ending in /: /console"),
        ({"path": "/a//b/"}, "console.path: must be a normalised path ending in /: /a//b/"),
        ({"path": "/"}, "console.path: / would put the page in front of every path"),
        ({"path": "/api/v1/api-keys/ui/"}, "console.path: must not overlap /api/v1/api-keys"),
        ({"path": "/API/"}, "console.path: must not overlap /api/v1/api-keys"),
        (
            {"enabled": "yes please"},
            "console.enabled: must be a valid boolean, unable to interpret input",
        ),
        ({"colour": "blue"}, "console.colour: unknown key"),
        (
            {"enabled": True, "login_url": "/login"},
            "console.login_url: /login is not under auth.public_paths: the page signs in "
            "without a credential, so the sidecar would refuse it",
        ),
        (
            {"enabled": True, "path": "/api/v1/auth/ui/", "refresh_url": "/api/v1/auth/ui/refresh"},
            "console.refresh_url: must not be under console.path",
        ),
    ],
)
def test_console_mistakes_are_reported_by_path(console: dict[str, Any], expected: str) -> None:
    assert expected in problems(console=console)


def test_the_page_off_does_not_check_its_sign_in_urls() -> None:
    assert config.parse(merge(VALID, {"console": {"login_url": "/login"}}), {}).console


def test_a_demo_user_id_is_a_user_id() -> None:
    found = problems(example_upstream={"demo_user_id": "has space"})
    assert any(p.startswith("example_upstream.demo_user_id: ") for p in found)


def test_the_demo_password_is_masked() -> None:
    parsed = config.parse(merge(VALID, {"example_upstream": {"demo_password": "s3cret-demo"}}), {})
    assert "s3cret-demo" not in repr(parsed) + yaml.safe_dump(masked_dump(parsed))


def test_the_documented_demo_credentials_are_the_example_configs() -> None:
    parsed = config.load(ROOT / "config" / "sidecar.yaml", env={})
    demo = parsed.example_upstream
    assert demo.demo_password is not None
    row = f"| `{demo.demo_email}` | `{demo.demo_password.get_secret_value()}` |"
    assert row in (ROOT / "docs" / "console.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"`{demo.demo_email}`" in readme
    assert f"`{demo.demo_password.get_secret_value()}`" in readme
