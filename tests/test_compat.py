"""The start-up check that refuses a uvicorn the protocol was not built against."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.server.compat import TESTED_UVICORN, untested_uvicorn
from tests.harness import HASH_SECRET, JWT_SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
TESTED = ".".join(map(str, TESTED_UVICORN))


@pytest.mark.parametrize("version", [f"{TESTED}.0", f"{TESTED}.7", f"{TESTED}.1rc1"])
def test_the_tested_minor_runs(version: str) -> None:
    assert untested_uvicorn(version) is None


@pytest.mark.parametrize("version", ["0.30.0", "0.55.0", "1.0.0", "0.53.9"])
def test_another_minor_is_refused_with_what_to_do(version: str) -> None:
    message = untested_uvicorn(version)
    assert message is not None
    assert f"uvicorn {version} is installed" in message
    assert f"uvicorn {TESTED}.x" in message
    assert "requirements.lock" in message


def test_an_unreadable_version_is_refused() -> None:
    assert untested_uvicorn("dev") == "cannot read uvicorn's version 'dev'"


def test_the_installed_uvicorn_is_the_tested_one() -> None:
    import uvicorn

    assert untested_uvicorn(uvicorn.__version__) is None


def test_serve_refuses_an_untested_uvicorn_before_binding_anything(tmp_path: Path) -> None:
    """A real ``serve`` in a process whose uvicorn reports another minor: exit 1 with
    the message, and the public port was never bound."""
    port = free_port()
    path = tmp_path / "c.yaml"
    settings = yaml.safe_load((ROOT / "config" / "docker.yaml").read_text())
    settings["server"].update(host="127.0.0.1", port=port)
    path.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ,
        "CALLCOV_JWT_SECRET": JWT_SECRET,
        "CALLCOV_KEY_HASH_SECRET": HASH_SECRET,
        "CALLCOV_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    code = (
        "import sys, uvicorn; uvicorn.__version__ = '0.99.0'; from sidecar.cli.main import main; "
        f"sys.exit(main(['--config', {str(path)!r}, 'serve']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "uvicorn 0.99.0 is installed" in result.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing holds it
