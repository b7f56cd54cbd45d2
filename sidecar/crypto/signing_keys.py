"""Keys for the signed identity assertion: PEM loading, JWKs and RFC 7638 thumbprints.

Pure (files and cryptography only), so config.py can validate what assertion.py will
actually load.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
ALGORITHMS = ("EdDSA", "ES256")


class KeyFileError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc


def load_private(path: str, algorithm: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key: {path}") from exc
    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    wanted = "an Ed25519 key for EdDSA" if algorithm == "EdDSA" else "a P-256 key for ES256"
    raise KeyFileError(f"must hold {wanted}: {path}")


def load_public(path: str) -> PublicKey:
    """A public key PEM, or the public half of a private key PEM."""
    data = _read(path)
    try:
        key: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a PEM public key: {path}") from exc
    if isinstance(key, ed25519.Ed25519PublicKey) or (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise KeyFileError(f"must hold an Ed25519 or P-256 key: {path}")


def private_key_problem(path: str, algorithm: str) -> str | None:
    try:
        load_private(path, algorithm)
    except KeyFileError as exc:
        return str(exc)
    return None


def public_key_problem(path: str) -> str | None:
    try:
        load_public(path)
    except KeyFileError as exc:
        return str(exc)
    return None


def algorithm_of(key: PublicKey) -> str:
    return "EdDSA" if isinstance(key, ed25519.Ed25519PublicKey) else "ES256"


def required_members(key: PublicKey) -> dict[str, str]:
    """The JWK members RFC 7638 hashes for this key type (its public key, no extras)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(key: PublicKey) -> str:
    """RFC 7638: SHA-256 of the required members, keys sorted, no whitespace."""
    canonical = orjson.dumps(required_members(key), option=orjson.OPT_SORT_KEYS)
    return _b64(hashlib.sha256(canonical).digest())


def jwk(key: PublicKey, kid: str) -> dict[str, str]:
    return {**required_members(key), "kid": kid, "alg": algorithm_of(key), "use": "sig"}
