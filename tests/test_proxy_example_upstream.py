"""The walkthrough (README, docs/quickstart.md): ``serve --example-upstream`` runs the
echo upstream next to the sidecar; create a key, call the API with it, see the identity
the upstream got."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Api
from tests.harness import free_port, running_sidecar


def test_walkthrough_with_the_example_upstream(config_for: Any, tmp_path: Path, user: str) -> None:
    config = config_for(upstream={"url": f"http://127.0.0.1:{free_port()}"})
    with running_sidecar(config, tmp_path, "--example-upstream") as sidecar:
        api = Api(sidecar.url)
        key = api.create_key(user, description="walkthrough")
        response = api.http.post(
            "/api/v1/analysis/?lang=en",
            content=b"audio bytes",
            headers={"X-API-Key": key["api_key"], "X-CallCov-User-Id": "forged"},
        )
        assert response.status_code == 200, response.text
        seen = response.json()
        assert seen["identity"] == {"user_id": user, "auth_method": "api_key", "key_id": key["id"]}
        assert (seen["method"], seen["path"], seen["query"]) == (
            "POST",
            "/api/v1/analysis/",
            "lang=en",
        )
        assert seen["body_bytes"] == len(b"audio bytes")
        assert "x-api-key" not in seen["headers"]
        api.http.close()
