"""Start-up and shutdown of the real process: graceful SIGTERM, failing fast, Redis down."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import make_token
from tests.harness import SidecarProcess, free_port, wait_until
from tests.upstream_app import RecordingUpstream


def _accepting(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _request_in_background(url: str, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(httpx.get(url, timeout=20, **kwargs))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    spawn: Any, recorder: RecordingUpstream
) -> None:
    process: SidecarProcess = spawn()
    headers = {"Authorization": f"Bearer {make_token('lifecycle-user')}"}
    thread, outcome = _request_in_background(process.url + "/slow?seconds=3", headers=headers)
    wait_until(lambda: any(r.path == "/slow" for r in recorder.received), timeout=5)

    process.signal(signal.SIGTERM)
    port = process.config["server"]["port"]
    wait_until(lambda: not _accepting(port), timeout=2)  # stopped accepting at once
    draining = httpx.get(process.admin_url + "/readyz")
    assert draining.status_code == 503
    assert draining.json()["problems"] == ["shutting down"]
    assert thread.is_alive()  # still being served

    thread.join(10)
    [response] = outcome
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.json()["path"] == "/slow"
    assert process.process is not None
    assert process.process.wait(10) == 0
    assert '"message":"stopped"' in process.logs()


def test_requests_still_running_after_the_grace_period_are_cut(
    spawn: Any, config_for: Any, recorder: RecordingUpstream
) -> None:
    process: SidecarProcess = spawn(config_for(server={"graceful_timeout_seconds": 1}))
    headers = {"Authorization": f"Bearer {make_token('lifecycle-user')}"}
    thread, outcome = _request_in_background(process.url + "/slow?seconds=8", headers=headers)
    wait_until(lambda: any(r.path == "/slow" for r in recorder.received), timeout=5)
    process.signal(signal.SIGTERM)
    assert process.process is not None
    assert process.process.wait(5) == 0  # 1 s of grace, not the request's 8
    thread.join(5)
    [cut] = outcome
    assert isinstance(cut, httpx.HTTPError) or cut.status_code >= 500


def test_redis_down_at_start_serves_jwt_and_reports_unready(spawn: Any, config_for: Any) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    process: SidecarProcess = spawn(config_for(redis={"url": dead_redis}))
    assert "redis unreachable at start (ConnectionError); serving, /readyz reports 503" in (
        process.logs()
    )
    ready = httpx.get(process.admin_url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["redis unreachable (ConnectionError)"]
    token = make_token("jwt-without-redis")
    assert (
        httpx.get(process.url + "/a", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    from sidecar.keys import format as keyformat

    keyed = httpx.get(process.url + "/a", headers={"X-API-Key": keyformat.generate()})
    assert keyed.status_code == 503
    process.signal(signal.SIGINT)  # Ctrl-C is as graceful as SIGTERM
    assert process.process is not None
    assert process.process.wait(10) == 0


def _serve(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sidecar", "serve", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _serve_with_port_taken(
    config: dict[str, Any], section: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config[section]["port"]))
        taken.listen()
        return _serve(config, tmp_path)


def test_a_public_port_in_use_fails_fast_with_exit_1(config_for: Any, tmp_path: Path) -> None:
    config = config_for()
    result = _serve_with_port_taken(config, "server", tmp_path)
    assert result.returncode == 1
    assert (
        f"cannot listen on 127.0.0.1:{config['server']['port']} for the public listener "
        "(server.host/server.port): Address already in use"
    ) in result.stderr


def test_an_admin_port_in_use_fails_fast_with_exit_1(config_for: Any, tmp_path: Path) -> None:
    config = config_for()
    result = _serve_with_port_taken(config, "admin", tmp_path)
    assert result.returncode == 1
    assert (
        f"cannot listen on 127.0.0.1:{config['admin']['port']} for the admin listener "
        "(admin.host/admin.port): Address already in use"
    ) in result.stderr
    assert not _accepting(config["server"]["port"])


def test_an_invalid_config_exits_2_before_binding_anything(config_for: Any, tmp_path: Path) -> None:
    config = config_for(server={"workers": 0})
    result = _serve(config, tmp_path)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "invalid configuration:\n  - server.workers: must be greater than or equal to 1\n"
    )
    assert "cannot listen" not in result.stderr and result.stdout == ""
