"""JWT verification: allow-list, alg none, algorithm confusion, claims."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.auth.jwt_auth import JwtVerifier, mint
from sidecar.config.model import JwtConfig
from sidecar.core.errors import NotAuthenticated
from tests.harness import wait_until

SECRET = "unit-test-jwt-secret-0123456789-abcdefghij"


def hs_config(**extra: Any) -> JwtConfig:
    return JwtConfig.model_validate({"algorithms": ["HS256"], "secret": SECRET, **extra})


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 600, **extra}


def verify(config: JwtConfig, token: str) -> str:
    return asyncio.run(JwtVerifier(config).user_id(token))


def rejected(config: JwtConfig, token: str) -> bool:
    try:
        verify(config, token)
    except NotAuthenticated as exc:
        assert exc.reason == "jwt_invalid"
        return True
    return False


def test_a_valid_token_yields_its_subject() -> None:
    assert verify(hs_config(), jwt.encode(claims(), SECRET, algorithm="HS256")) == "alice"


def test_the_user_id_claim_is_configurable() -> None:
    token = jwt.encode(claims(uid=42), SECRET, algorithm="HS256")
    assert verify(hs_config(user_id_claim="uid"), token) == "42"


@pytest.mark.parametrize(
    "token_claims",
    [
        claims(exp=int(time.time()) - 5),
        {k: v for k, v in claims().items() if k != "exp"},
        claims(nbf=int(time.time()) + 600),
        {k: v for k, v in claims().items() if k != "sub"},
        claims(sub=""),
        claims(sub="evil\r\nX-CallCov-User-Id: admin"),
        claims(sub=True),
    ],
)
def test_bad_claims_are_rejected(token_claims: dict[str, Any]) -> None:
    assert rejected(hs_config(), jwt.encode(token_claims, SECRET, algorithm="HS256"))


def test_wrong_secret_and_garbage_are_rejected() -> None:
    other = jwt.encode(claims(), "another-secret-0123456789-abcdefghijklmn", algorithm="HS256")
    assert rejected(hs_config(), other)
    assert rejected(hs_config(), "not.a.token")
    assert rejected(hs_config(), "")


def test_an_api_key_is_never_parsed_as_a_jwt() -> None:
    assert rejected(hs_config(), "sk_live_" + "a" * 48)


def test_alg_none_is_rejected() -> None:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims())}."
    assert rejected(hs_config(), unsigned)


def test_an_algorithm_outside_the_allow_list_is_rejected() -> None:
    assert rejected(hs_config(), jwt.encode(claims(), SECRET * 2, algorithm="HS512"))


def test_algorithm_confusion_public_key_as_hmac_secret_is_rejected(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public_pem)
    config = JwtConfig.model_validate({"algorithms": ["ES256"], "public_key_file": str(key_file)})
    good = jwt.encode(claims(), private, algorithm="ES256")
    assert verify(config, good) == "alice"
    forged = _hs256_with_raw_key(claims(), public_pem)
    assert rejected(config, forged)


def test_issuer_and_audience_are_enforced_when_configured() -> None:
    config = hs_config(issuer="callcov", audience="api")
    right = jwt.encode(claims(iss="callcov", aud="api"), SECRET, algorithm="HS256")
    assert verify(config, right) == "alice"
    for wrong in (claims(iss="other", aud="api"), claims(iss="callcov", aud="web"), claims()):
        assert rejected(config, jwt.encode(wrong, SECRET, algorithm="HS256"))


def test_minted_tokens_verify_and_carry_the_ttl() -> None:
    token = mint(hs_config(), "bob", ttl_seconds=120)
    assert verify(hs_config(), token) == "bob"
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["exp"] - decoded["iat"] == 120


def _hs256_with_raw_key(payload: dict[str, Any], key: bytes) -> str:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}."
    signing_input += b64(json.dumps(payload).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_a_remembered_token_still_expires_on_time() -> None:
    verifier = JwtVerifier(hs_config())
    expires = int(time.time()) + 1
    token = jwt.encode(claims(exp=expires), SECRET, algorithm="HS256")

    async def check() -> bool:
        try:
            await verifier.user_id(token)
        except NotAuthenticated:
            return False
        return True

    assert asyncio.run(check())  # verified once, now remembered
    wait_until(lambda: not asyncio.run(check()), timeout=5)
    assert time.time() >= expires
