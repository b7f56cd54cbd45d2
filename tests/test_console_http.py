"""The API Keys page's HTTP surface (SPEC Part 3), against a real sidecar process: the
page and its assets with their security headers, its settings, what it leaves to the
proxy when it is off, and the example upstream's demo login it signs in with."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.api.console import ASSETS_DIR
from tests.conftest import make_token
from tests.console_browser import DEMO_EMAIL, DEMO_PASSWORD, DEMO_USER, console_config
from tests.harness import HASH_SECRET, JWT_SECRET, SidecarProcess, free_port, remember_secret
from tests.upstream_app import RecordingUpstream


@pytest.fixture(scope="module")
def page(config_for: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """A sidecar with the page on, in front of the tests' recording upstream."""
    config = console_config(config_for())
    process = SidecarProcess(config, tmp_path_factory.mktemp("console")).start()
    yield process
    process.stop()


def _get(process: SidecarProcess, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, process.url + path, timeout=10)


def _assets() -> list[str]:
    """Every file index.html and the modules load, as the page asks for them."""
    html = (ASSETS_DIR / "index.html").read_text()
    wanted = set(re.findall(r'(?:src|href)="(assets/[^"]+)"', html))
    for module in ASSETS_DIR.glob("*.js"):
        wanted |= {
            f"assets/{name}" for name in re.findall(r'from "\./([^"]+)"', module.read_text())
        }
    return sorted(wanted)


def test_the_page_carries_its_security_headers(
    page: SidecarProcess, recorder: RecordingUpstream
) -> None:
    response = _get(page, "/console/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    # Nothing the policy would have to allow: no inline script, handler or style.
    assert re.findall(r"<script[^>]*>", response.text) == [
        '<script type="module" src="assets/main.js">'
    ]
    assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|<style", response.text, re.I)
    assert recorder.received == []  # the sidecar answers the page itself


def test_every_asset_the_page_loads_is_served_with_nosniff(page: SidecarProcess) -> None:
    types = {".js": "text/javascript", ".css": "text/css"}
    assets = _assets()
    assert {"assets/main.js", "assets/console.css", "assets/session.js"} <= set(assets)
    for asset in assets:
        response = _get(page, "/console/" + asset)
        assert response.status_code == 200, asset
        assert response.headers["x-content-type-options"] == "nosniff", asset
        assert response.headers["content-type"].startswith(types[Path(asset).suffix]), asset
        assert response.content == (ASSETS_DIR / Path(asset).name).read_bytes()


def test_page_settings_name_the_urls_and_limits_and_hold_no_secret(page: SidecarProcess) -> None:
    response = _get(page, "/console/config.json")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    settings = response.json()
    assert settings["login_url"] == "/api/v1/auth/login"
    assert settings["refresh_url"] == "/api/v1/auth/refresh"
    assert settings["keys_url"] == "/api/v1/api-keys/"
    assert settings["max_description"] == 500 and settings["max_grace_seconds"] == 604800
    assert isinstance(settings["scopes"], list)
    for secret in (JWT_SECRET, HASH_SECRET, DEMO_PASSWORD, DEMO_EMAIL):
        assert secret not in response.text


def test_other_paths_and_methods_of_the_page(
    page: SidecarProcess, recorder: RecordingUpstream
) -> None:
    redirect = _get(page, "/console")
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/console/")
    missing = _get(page, "/console/assets/nope.js")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert missing.headers["x-content-type-options"] == "nosniff"
    posted = _get(page, "/console/", method="POST")
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET, HEAD")
    head = _get(page, "/console/assets/main.js", method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == (ASSETS_DIR / "main.js").stat().st_size
    assert _get(page, "/console/../console/assets/main.js").status_code == 200
    # Only the configured prefix: a sibling path is still the API's, behind auth.
    assert _get(page, "/consoles/").status_code == 401
    assert recorder.received == []


def test_with_the_page_off_its_path_is_an_ordinary_path(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    refused = _get(sidecar, "/console/")
    assert refused.status_code == 401
    assert recorder.received == []
    token = make_token(user)
    proxied = httpx.get(sidecar.url + "/console/", headers={"Authorization": f"Bearer {token}"})
    assert proxied.status_code == 200
    assert [r.path for r in recorder.received] == ["/console/"]
    assert "content-security-policy" not in proxied.headers


def test_the_example_upstream_signs_the_demo_user_in(config_for: Any, tmp_path: Path) -> None:
    config = console_config(config_for(upstream={"url": f"http://127.0.0.1:{free_port()}"}))
    process = SidecarProcess(config, tmp_path, ("--example-upstream",)).start()
    try:
        login = process.url + "/api/v1/auth/login"
        wrong = httpx.post(login, json={"email": DEMO_EMAIL, "password": "nope"})
        assert wrong.status_code == 401
        assert httpx.post(login, json=["not", "an", "object"]).status_code == 422
        signed_in = httpx.post(login, json={"email": DEMO_EMAIL.upper(), "password": DEMO_PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        tokens = signed_in.json()
        remember_secret(tokens["access_token"])
        remember_secret(tokens["refresh_token"])
        assert tokens["token_type"] == "bearer"
        keys = process.url + "/api/v1/api-keys/"

        def listing(token: str) -> httpx.Response:
            return httpx.get(keys, headers={"Authorization": f"Bearer {token}"})

        assert listing(tokens["access_token"]).status_code == 200
        echoed = httpx.get(
            process.url + "/api/v1/analysis/",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ).json()
        assert echoed["identity"]["user_id"] == DEMO_USER
        # A refresh token is not an access token.
        assert listing(tokens["refresh_token"]).status_code == 401
        refreshed = httpx.post(
            process.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200
        renewed = remember_secret(refreshed.json()["access_token"])
        remember_secret(refreshed.json()["refresh_token"])
        assert listing(renewed).status_code == 200
        bad = httpx.post(
            process.url + "/api/v1/auth/refresh", json={"refresh_token": tokens["access_token"]}
        )
        assert bad.status_code == 401
    finally:
        process.stop()


def test_the_wheel_the_image_installs_carries_every_asset(tmp_path: Path) -> None:
    """What the Dockerfile's build stage copies (pyproject.toml, README.md, sidecar/),
    built into a wheel: the page's files are package data, not only files in the tree."""
    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    shutil.copytree(
        root / "sidecar", source / "sidecar", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path / "wheel")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if n.startswith("sidecar/api/console_assets/")}
    expected = {f"sidecar/api/console_assets/{f.name}" for f in ASSETS_DIR.iterdir() if f.is_file()}
    assert packaged == expected
