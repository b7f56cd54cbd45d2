"""Dockerfile and docker-compose.yml, checked the way a linter would (no Docker engine
here): they parse, and ports, paths and environment agree with each other and with
the config file the image ships and compose mounts."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sidecar.config import loading as config_module
from sidecar.config.interpolate import interpolate
from sidecar.config.model import Config

ROOT = Path(__file__).resolve().parent.parent
CONFIG_IN_IMAGE = "/etc/callcov-sidecar/sidecar.yaml"
CONTAINER_DOCS = "docs/deployment/containers.md"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (KEYWORD, arguments) per build stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(rest.split())))
    return stages


def final_stage() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for keyword, args in dockerfile_stages()[-1]:
        found.setdefault(keyword, []).append(args)
    return found


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def sidecar_service() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["sidecar"]
    return service


def compose_environment() -> dict[str, str]:
    """The sidecar's environment as compose resolves it with nothing set on the host."""
    raw = {k: str(v) for k, v in sidecar_service()["environment"].items()}
    resolved: dict[str, str] = interpolate(raw, {})
    return resolved


def mounted_config_path() -> Path:
    for volume in sidecar_service()["volumes"]:
        source, target, *_ = volume.split(":")
        if target == CONFIG_IN_IMAGE:
            return ROOT / source
    raise AssertionError(f"docker-compose.yml mounts nothing at {CONFIG_IN_IMAGE}")


def container_config() -> Config:
    return config_module.load(mounted_config_path(), compose_environment())


def _env_instructions() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in final_stage().get("ENV", []):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


# --- Dockerfile ---------------------------------------------------------------------


def test_the_image_is_slim_python_matching_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["requires-python"].removeprefix(">=")
    for stage in dockerfile_stages():
        _, base = stage[0]
        assert re.fullmatch(rf"python:{re.escape(wanted)}-slim( AS \w+)?", base), base


def test_the_image_runs_as_an_unprivileged_user() -> None:
    [user] = final_stage()["USER"]
    assert user.split(":")[0] not in ("root", "0")


def test_the_image_runs_the_console_script_with_the_documented_config() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [entrypoint] = final_stage()["ENTRYPOINT"]
    [command] = final_stage()["CMD"]
    assert yaml.safe_load(entrypoint) == ["callcov-sidecar"] and "callcov-sidecar" in scripts
    assert yaml.safe_load(command) == ["serve"]
    assert _env_instructions()["SIDECAR_CONFIG"] == CONFIG_IN_IMAGE
    assert f"config/docker.yaml {CONFIG_IN_IMAGE}" in final_stage()["COPY"]


def test_exposed_ports_are_the_configured_listeners() -> None:
    config = container_config()
    [exposed] = final_stage()["EXPOSE"]
    assert {int(p) for p in exposed.split()} == {config.server.port, config.admin.port}
    assert config.server.host == "0.0.0.0"  # reachable through a published port


def test_the_healthcheck_probes_the_admin_healthz_without_curl() -> None:
    config = container_config()
    [healthcheck] = final_stage()["HEALTHCHECK"]
    command = yaml.safe_load(healthcheck.partition("CMD ")[2])
    assert command[:2] == ["python", "-c"]  # slim images ship no curl or wget
    assert f"http://127.0.0.1:{config.admin.port}/healthz" in command[2]
    assert config.admin.host in ("0.0.0.0", "127.0.0.1")  # loopback reaches it
    compile(command[2], "<healthcheck>", "exec")


def test_the_build_needs_no_compiler() -> None:
    # Every dependency ships wheels: no apt-get, no build-essential in any stage.
    for stage in dockerfile_stages():
        for keyword, args in stage:
            assert not (keyword == "RUN" and ("apt-get" in args or "build-essential" in args))


def test_the_build_installs_the_locked_versions() -> None:
    build = dockerfile_stages()[0]
    copied = [args.split() for keyword, args in build if keyword == "COPY"]
    assert any("requirements.lock" in sources for sources in copied)
    installs = [args for keyword, args in build if keyword == "RUN" and "pip install" in args]
    assert installs
    for args in installs:  # scripts/container-smoke compares the image with the lock
        assert re.search(r"(-c|--constraint)[ =]requirements\.lock\b", args), args


def test_what_the_build_copies_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for pattern in (".venv", ".git", "data", "tests"):
        assert pattern in ignored
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword != "COPY" or args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not any(fnmatch.fnmatch(source, p) for p in ignored), source


# --- docker-compose.yml ----------------------------------------------------------------


def test_compose_has_the_three_services_and_builds_this_image() -> None:
    services = compose()["services"]
    assert set(services) == {"sidecar", "redis", "upstream"}
    assert services["sidecar"]["build"] == "."
    assert services["upstream"]["image"] == services["sidecar"]["image"]


def test_the_mounted_config_is_valid_with_the_compose_environment() -> None:
    assert mounted_config_path() == ROOT / "config" / "docker.yaml"
    volume = next(v for v in sidecar_service()["volumes"] if CONFIG_IN_IMAGE in v)
    assert volume.endswith(":ro")
    config = container_config()  # raises ConfigError listing what is wrong
    assert config.auth.jwt.secret is not None
    required = re.findall(r"\$\{([A-Z_]+)\}", mounted_config_path().read_text())
    assert set(required) <= set(compose_environment()), "a ${VAR} the compose file does not set"


def published_ports(env: dict[str, str]) -> dict[int, str]:
    """Container port -> host side of each mapping, as compose resolves it with ``env``."""
    published = {}
    for mapping in interpolate(sidecar_service()["ports"], env):
        *host, container = mapping.split(":")
        published[int(container)] = ":".join(host)
    return published


def test_published_ports_match_the_config() -> None:
    config = container_config()
    published = published_ports({})
    assert published[config.server.port] == str(config.server.port)
    assert published[config.admin.port] == f"127.0.0.1:{config.admin.port}"  # not public


def test_the_host_ports_can_be_moved_and_admin_stays_on_loopback() -> None:
    # scripts/container-smoke publishes on free ports through these two variables.
    config = container_config()
    published = published_ports({"CALLCOV_PUBLIC_PORT": "18080", "CALLCOV_ADMIN_PORT": "19090"})
    assert published == {config.server.port: "18080", config.admin.port: "127.0.0.1:19090"}
    smoke = (ROOT / "scripts" / "container-smoke").read_text()
    assert "CALLCOV_PUBLIC_PORT" in smoke and "CALLCOV_ADMIN_PORT" in smoke


def test_the_sidecar_reaches_redis_and_the_upstream_by_service_name() -> None:
    config, services = container_config(), compose()["services"]
    redis_url = urlsplit(config.redis.url)
    assert redis_url.scheme == "redis"
    assert redis_url.hostname in services and "redis-server" in services["redis"]["command"]
    assert redis_url.port == 6379
    upstream_url = urlsplit(config.upstream.url)
    assert upstream_url.hostname == "upstream"
    command = services["upstream"]["entrypoint"]
    assert command[command.index("--port") + 1] == str(upstream_url.port)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert sidecar_service()["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert "healthcheck" in services["redis"]


def test_the_example_upstream_in_compose_is_importable() -> None:
    command = compose()["services"]["upstream"]["entrypoint"]
    module, _, attribute = next(a for a in command if ":" in a and "." in a).partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_redis_persists_to_a_named_volume() -> None:
    redis_service = compose()["services"]["redis"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    [volume] = redis_service["volumes"]
    name, target = volume.split(":")
    assert target == "/data"  # the official image's working directory
    assert name in compose()["volumes"]


def test_compose_waits_longer_than_the_graceful_timeout() -> None:
    config = container_config()
    grace = _seconds(sidecar_service()["stop_grace_period"])
    assert grace > config.server.graceful_timeout_seconds


@pytest.mark.parametrize(
    "text", [CONFIG_IN_IMAGE, "docker compose up", "docker-compose up", "scripts/container-smoke"]
)
def test_the_docs_document_the_container(text: str) -> None:
    assert text in (ROOT / CONTAINER_DOCS).read_text()


def documented_commands(path: Path) -> list[list[str]]:
    """Every ``docker run`` and compose ``exec`` in a file (code or comments), lines joined."""
    text = re.sub(r"\\\n#?\s*", " ", path.read_text())
    found = re.findall(r"docker(?:-compose| compose) exec [^`)\n]*|docker run [^`)\n]*", text)
    return [shlex.split(command) for command in found]


@pytest.mark.parametrize("name", [CONTAINER_DOCS, "Dockerfile", "docker-compose.yml"])
def test_documented_docker_commands_work_with_compose_v1_and_stop_gracefully(name: str) -> None:
    graceful = container_config().server.graceful_timeout_seconds
    commands = documented_commands(ROOT / name)
    assert commands, f"{name} documents no docker command"
    for argv in commands:
        if "exec" in argv:  # used inside $(...): compose v1 allocates a TTY without -T
            assert "-T" in argv[argv.index("exec") :], argv
        if argv[:2] == ["docker", "run"]:
            assert "--stop-timeout" in argv, argv
            assert int(argv[argv.index("--stop-timeout") + 1]) > graceful, argv


def test_the_smoke_script_is_executable_and_checks_what_it_says() -> None:
    script = ROOT / "scripts" / "container-smoke"
    assert script.stat().st_mode & 0o111
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    for step in ("exec -T sidecar callcov-sidecar token --sub alice", "docker stop", "down -v"):
        assert step in text, step
