from __future__ import annotations

from tests.conftest import Api
from tests.upstream_app import RecordingUpstream


def test_api_key_request_reaches_upstream_with_identity(
    api: Api, user: str, recorder: RecordingUpstream
) -> None:
    key = api.create_key(user)
    response = api.http.post(
        "/api/v1/analysis/?a=1&b=%20x",
        content=b"hello",
        headers={"X-API-Key": key["api_key"], "X-CallCov-User-Id": "forged"},
    )
    assert response.status_code == 200, response.text
    seen = recorder.received[-1]
    assert seen.method == "POST"
    assert seen.path == "/api/v1/analysis/"
    assert seen.query == "a=1&b=%20x"
    assert seen.body_bytes == 5
    assert seen.header("x-callcov-user-id") == user
    assert seen.header("x-callcov-auth-method") == "api_key"
    assert seen.header("x-callcov-key-id") == key["id"]
    assert seen.header("x-api-key") is None
    assert response.headers["x-request-id"]
