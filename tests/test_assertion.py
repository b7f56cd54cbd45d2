"""The signed identity assertion (SPEC "Signed identity assertion"), verified with PyJWT
against the JWKS the admin listener serves. Real sidecar processes, real upstream."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sidecar.config.loading import parse
from sidecar.config.model import ConfigError
from tests.conftest import Api, make_token
from tests.harness import SidecarProcess, free_port, wait_until
from tests.upstream_app import RecordingUpstream

ISSUER, AUDIENCE = "https://sidecar.test", "analysis-backend"


def write_private(path: Path, key: Any) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def write_public(path: Path, key: Any) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def rfc7638(jwk: dict[str, str]) -> str:
    """Independent of the sidecar: the RFC 7638 thumbprint of an OKP or EC JWK."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("keys")
    previous = ec.generate_private_key(ec.SECP256R1())
    return {
        "ed25519": write_private(directory / "ed.pem", ed25519.Ed25519PrivateKey.generate()),
        "p256": write_private(directory / "p256.pem", ec.generate_private_key(ec.SECP256R1())),
        "previous": write_public(directory / "previous.pem", previous),
    }


@pytest.fixture(scope="module")
def signing(
    config_for: Any, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    config = config_for(
        identity={
            "assertion": {
                "enabled": True,
                "private_key_file": keys["ed25519"],
                "algorithm": "EdDSA",
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "previous_public_key_files": [keys["previous"]],
            }
        },
        forward_auth={"enabled": True, "port": free_port()},
    )
    process = SidecarProcess(config, tmp_path_factory.mktemp("assertion")).start()
    yield process
    process.stop()


def jwks(sidecar: SidecarProcess) -> dict[str, Any]:
    response = httpx.get(sidecar.admin_url + "/.well-known/jwks.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def verify(sidecar: SidecarProcess, token: str) -> dict[str, Any]:
    """What an upstream does: pick the key by kid from the JWKS, verify with PyJWT."""
    key = jwt.PyJWKSet.from_dict(jwks(sidecar))[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["EdDSA", "ES256"], audience=AUDIENCE, issuer=ISSUER
    )
    return claims


def forwarded(recorder: RecordingUpstream, where: str) -> Any:
    [request] = [r for r in recorder.received if r.path == where]
    return request


def test_the_jwks_publishes_current_and_previous_keys_with_thumbprint_kids(
    signing: SidecarProcess,
) -> None:
    document = jwks(signing)
    current, previous = document["keys"]
    assert (current["kty"], current["crv"], current["alg"]) == ("OKP", "Ed25519", "EdDSA")
    assert current["kid"] == rfc7638(current)
    assert (previous["kty"], previous["crv"]) == ("EC", "P-256")
    assert previous["kid"] == rfc7638(previous)
    assert all("d" not in jwk for jwk in document["keys"])  # never a private part


def test_an_api_key_request_carries_a_verifiable_route_bound_assertion(
    signing: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    key = Api(signing.url).create_key(user)
    where = f"/api/v1/things/{uuid.uuid4().hex}"
    before = int(time.time())
    response = httpx.post(
        signing.url + where + "//x?secret=1",
        headers={"X-API-Key": key["api_key"], "X-CallCov-Identity": "forged"},
    )
    assert response.status_code == 200
    token = forwarded(recorder, where + "/x").header("x-callcov-identity")
    assert token != "forged"
    claims = verify(signing, token)
    assert claims["sub"] == user
    assert (claims["auth_method"], claims["key_id"], claims["environment"]) == (
        "api_key",
        key["id"],
        "live",
    )
    assert (claims["htm"], claims["htu"]) == ("POST", where + "/x")  # normalised, no query
    assert before <= claims["iat"] and claims["exp"] - claims["iat"] <= 60


def test_a_jwt_request_has_no_key_claims_and_routes_do_not_share_assertions(
    signing: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    first, second = (f"/api/v1/r/{uuid.uuid4().hex}" for _ in range(2))
    for where in (first, first, second):
        assert httpx.get(signing.url + where, headers=bearer).status_code == 200
    tokens = [r.header("x-callcov-identity") for r in recorder.received]
    assert tokens[0] == tokens[1]  # one signature per identity, method and path for a while
    assert tokens[2] != tokens[0]
    claims = verify(signing, tokens[2])
    assert claims["auth_method"] == "jwt"
    assert "key_id" not in claims and "environment" not in claims
    assert claims["htu"] == second


def test_forward_auth_allows_carry_the_assertion_for_the_original_route(
    signing: SidecarProcess, user: str
) -> None:
    decisions = f"http://127.0.0.1:{signing.config['forward_auth']['port']}"
    allowed = httpx.get(
        decisions,
        headers={
            "X-Original-Method": "DELETE",
            "X-Original-URI": "/api/v1/things/7?x=1",
            "Authorization": f"Bearer {make_token(user)}",
        },
    )
    assert allowed.status_code == 200
    claims = verify(signing, allowed.headers["x-callcov-identity"])
    assert (claims["sub"], claims["htm"], claims["htu"]) == (user, "DELETE", "/api/v1/things/7")


def test_es256_with_a_configured_key_id_and_a_custom_header(
    spawn: Any, config_for: Any, keys: dict[str, str], recorder: RecordingUpstream, user: str
) -> None:
    sidecar = spawn(
        config_for(
            identity={
                "assertion": {
                    "enabled": True,
                    "header": "X-Signed-Caller",
                    "private_key_file": keys["p256"],
                    "algorithm": "ES256",
                    "key_id": "2026-11",
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "ttl_seconds": 30,
                }
            }
        )
    )
    [only] = jwks(sidecar)["keys"]
    assert (only["kid"], only["alg"], only["crv"]) == ("2026-11", "ES256", "P-256")
    response = httpx.get(
        sidecar.url + "/api/v1/es",
        headers={
            "Authorization": f"Bearer {make_token(user)}",
            "X-Signed-Caller": "forged",
            "X-CallCov-Identity": "forged",
        },
    )
    assert response.status_code == 200
    request = forwarded(recorder, "/api/v1/es")
    assert request.header("x-callcov-identity") is None
    token = request.header("x-signed-caller")
    assert jwt.get_unverified_header(token)["kid"] == "2026-11"
    claims = verify(sidecar, token)
    assert claims["exp"] - claims["iat"] == 30


def test_without_assertions_there_is_no_jwks_and_the_header_is_stripped(
    sidecar: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    assert httpx.get(sidecar.admin_url + "/.well-known/jwks.json").status_code == 404
    httpx.get(
        sidecar.url + "/api/v1/auth/login", headers={"x-callcov-identity": "forged"}
    ).raise_for_status()
    assert forwarded(recorder, "/api/v1/auth/login").header("x-callcov-identity") is None


def test_the_example_upstream_verifies_the_assertion(
    spawn: Any, config_for: Any, keys: dict[str, str], user: str
) -> None:
    upstream_port = free_port()
    config = config_for(
        identity={"assertion": {"enabled": True, "private_key_file": keys["ed25519"]}}
    )
    config["upstream"]["url"] = f"http://127.0.0.1:{upstream_port}"
    sidecar = spawn(config, "--example-upstream")
    wait_until(lambda: _answers(f"http://127.0.0.1:{upstream_port}/"), timeout=10)
    echoed = httpx.get(
        sidecar.url + "/api/v1/me", headers={"Authorization": f"Bearer {make_token(user)}"}
    )
    assert echoed.status_code == 200
    assert echoed.json()["assertion"]["sub"] == user
    # a caller that bypasses the sidecar and forges the identity headers is refused
    bypass = httpx.get(
        f"http://127.0.0.1:{upstream_port}/api/v1/me", headers={"X-CallCov-User-Id": user}
    )
    assert bypass.status_code == 401
    assert bypass.json() == {"detail": "invalid identity assertion"}


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


def test_config_problems_are_reported_by_path(keys: dict[str, str], tmp_path: Path) -> None:
    base = {
        "upstream": {"url": "http://127.0.0.1:9000"},
        "auth": {"jwt": {"secret": "s" * 32}, "api_keys": {"hash_secret": "x" * 32}},
    }

    def problems(assertion: dict[str, Any]) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            parse({**base, "identity": {"assertion": assertion}}, {})
        return caught.value.problems

    assert problems({"enabled": True}) == [
        "identity.assertion.private_key_file: required when assertions are enabled"
    ]
    assert problems({"enabled": True, "private_key_file": keys["p256"]}) == [
        f"identity.assertion.private_key_file: must hold an Ed25519 key for EdDSA: {keys['p256']}"
    ]
    missing = str(tmp_path / "nope.pem")
    assert problems(
        {
            "enabled": True,
            "private_key_file": keys["ed25519"],
            "algorithm": "RS256",
            "previous_public_key_files": [missing],
        }
    ) == [
        "identity.assertion.algorithm: must be 'EdDSA' or 'ES256'",
        f"identity.assertion.previous_public_key_files[0]: cannot read {missing}: "
        "No such file or directory",
    ]


def test_the_documented_upstream_check_works(
    signing: SidecarProcess, recorder: RecordingUpstream, user: str
) -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "security" / "identity-assertion.md"
    text = page.read_text()
    snippet = text.split("What an upstream needs (PyJWT):\n\n```python\n")[1].split("```")[0]
    snippet = snippet.replace("http://sidecar-admin:9090", signing.admin_url)
    snippet = snippet.replace('"callcov-upstream"', repr(AUDIENCE))
    snippet = snippet.replace('"callcov-sidecar"', repr(ISSUER))
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    where = f"/api/v1/readme/{uuid.uuid4().hex}"
    bearer = {"Authorization": f"Bearer {make_token(user)}"}
    assert httpx.put(signing.url + where, headers=bearer).status_code == 200
    headers = {"X-CallCov-Identity": forwarded(recorder, where).header("x-callcov-identity")}
    assert namespace["caller"]("PUT", where, headers)["sub"] == user
    with pytest.raises(PermissionError):
        namespace["caller"]("GET", where, headers)
