"""The quick start as written: every ```bash block of docs/quickstart.md (and the README's
walkthrough) runs verbatim, in order, in one bash, against a sidecar started as
./scripts/dev starts it (the example config, an embedded Redis, the example upstream),
so the pages cannot drift from what the sidecar does."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import SidecarProcess, free_port, remember_secret, wait_until

ROOT = Path(__file__).resolve().parent.parent
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
END = "@@quickstart-block-end@@"


def bash_blocks(page: Path) -> list[str]:
    blocks = BASH_BLOCK.findall(page.read_text())
    assert blocks, f"{page} has no bash block"
    return blocks


def dev_process(workdir: Path) -> SidecarProcess:
    """config/sidecar.yaml as ./scripts/dev runs it, on free ports and a fresh Redis."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config" / "sidecar.yaml").read_text())
    config["server"]["port"] = free_port()
    config["admin"]["port"] = free_port()
    config["upstream"]["url"] = f"http://127.0.0.1:{free_port()}"
    config["redis"]["embedded_dir"] = str(workdir / "redis")
    return SidecarProcess(config, workdir, ("--example-upstream",))


@pytest.fixture(scope="module")
def dev_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    process = dev_process(tmp_path_factory.mktemp("quickstart")).start()
    try:
        yield process
    finally:
        process.stop()


def test_the_start_up_ends_with_where_the_sidecar_listens(tmp_path: Path) -> None:
    process = dev_process(tmp_path).start()
    try:
        wait_until(lambda: "listening: " in process.logs())
        messages = [
            line["message"]
            for line in map(json.loads, process.logs().splitlines())
            if "logger" in line
        ]
    finally:
        process.stop()
    # Not the example upstream's "Uvicorn running on", nor one start line per server.
    assert process.config["console"]["enabled"]  # the dev config serves the keys page
    assert messages[-1] == (
        f"listening: API {process.url}, admin {process.admin_url} (/healthz, /readyz, /metrics)"
        f", keys page {process.url}{process.config['console']['path']}; 1 worker(s)"
    )
    assert process.process is not None
    started = [m for m in messages if m.startswith("Started server process")]
    assert started == [f"Started server process [{process.process.pid}]"]
    assert not [m for m in messages if "Uvicorn running" in m]


class Run:
    """The blocks' outputs, each findable by a fragment of its command text."""

    def __init__(self, blocks: list[str], stdout: str) -> None:
        outputs = stdout.split(END + "\n")
        assert len(outputs) == len(blocks) + 1, stdout
        self.pairs = list(zip(blocks, outputs, strict=False))

    def output(self, fragment: str) -> list[str]:
        found = [out for block, out in self.pairs if fragment in block]
        assert len(found) == 1, f"{len(found)} blocks contain {fragment!r}"
        return found[0].strip().splitlines()


def run_verbatim(blocks: list[str], sidecar: SidecarProcess) -> Run:
    script = "set -euo pipefail\n" + "".join(f"{block}printf '\\n{END}\\n'\n" for block in blocks)
    env = {
        **os.environ,
        "SIDECAR": sidecar.url,
        "ADMIN": sidecar.admin_url,
        "SIDECAR_CONFIG": str(sidecar.config_path),  # for the CLI's `token`
    }
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return Run(blocks, done.stdout)


def access_lines(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in sidecar.logs().splitlines() if line.startswith("{"))
    return [line for line in lines if "status" in line and "route" in line]


def creates(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    """Access lines of key-API POSTs answered 201 (creates and rotations)."""
    return [
        line
        for line in access_lines(sidecar)
        if line["method"] == "POST" and line["route"] == "api_keys" and line["status"] == 201
    ]


def created(lines: list[str]) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(lines[0])
    remember_secret(answer["api_key"])
    return answer


def test_the_quick_start_runs_as_written(dev_sidecar: SidecarProcess) -> None:
    before = len(creates(dev_sidecar))
    run = run_verbatim(bash_blocks(ROOT / "docs" / "quickstart.md"), dev_sidecar)

    assert json.loads(run.output("/readyz")[0])["status"] == "ready"
    key = created(run.output('"Production API key"'))
    assert key["api_key"].startswith("sk_live_") and key["key_prefix"] == key["api_key"][:14]
    assert (key["expires_at"], key["environment"]) == (None, "live")

    echoed = json.loads("\n".join(run.output('"X-API-Key: $API_KEY"; echo')))
    assert echoed["identity"] == {"user_id": "alice", "auth_method": "api_key", "key_id": key["id"]}
    assert "x-api-key" not in echoed["headers"]
    assert run.output("-w '%{http_code}\\n' \"$SIDECAR/api/v1/analysis/\"\n") == ["401"]

    listed = json.loads(run.output('"$SIDECAR/api/v1/api-keys/" -H')[0])
    [item] = [item for item in listed["api_keys"] if item["id"] == key["id"]]
    assert item["is_active"] is True and "api_key" not in item

    revoked = run.output("-X DELETE")
    assert json.loads(revoked[0]) == {"message": "API key expired successfully", "success": True}
    assert revoked[1] == "401"

    expiring = created(run.output("Quarterly export"))
    assert expiring["expires_at"] is not None and expiring["environment"] == "live"
    test_key = created(run.output('"environment": "test"'))
    assert test_key["api_key"].startswith("sk_test_") and test_key["environment"] == "test"

    rotation = run.output("/rotate")
    rotated = created(rotation)
    assert rotated["rotated_from"] == expiring["id"]
    assert rotated["expires_at"] == expiring["expires_at"]
    assert rotation[1:] == ["200", "200"]  # the old key in its grace, and the new one

    usage = json.loads(run.output("/usage?days=7")[0])
    assert usage["id"] == rotated["id"] and len(usage["days"]) == 7

    # The sidecar's own account: three creates and a rotation answered 201.
    wait_until(lambda: len(creates(dev_sidecar)) == before + 4)


def test_the_readme_walkthrough_runs_as_written(dev_sidecar: SidecarProcess) -> None:
    [walkthrough] = bash_blocks(ROOT / "README.md")
    run = run_verbatim([walkthrough], dev_sidecar)
    [lines] = [out.strip().splitlines() for _, out in run.pairs]
    key = created(lines)
    assert (key["expires_at"], key["environment"]) == (None, "live")
    assert f'"key_id": "{key["id"]}"' in "\n".join(lines)  # the echoed identity
    assert '{"message":"API key expired successfully","success":true}' in lines
    assert lines[-1] == "401"
