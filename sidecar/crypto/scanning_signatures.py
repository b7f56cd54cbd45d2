"""Secret-scanning report signatures: GitHub's public-keys document and the check.

The document is the shape GitHub publishes at
``https://api.github.com/meta/public_keys/secret_scanning``::

    {"public_keys": [{"key_identifier": "...", "key": "-----BEGIN PUBLIC KEY-----...",
                      "is_current": true}]}

Each ``key`` is an ECDSA P-256 public key in PEM; a report carries the identifier of
the key that signed it and a base64 DER signature over the raw body (SHA-256).
Pure: no I/O (the file and the URL are read by the callers).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKeys = dict[str, ec.EllipticCurvePublicKey]
_SIGNATURE = ec.ECDSA(hashes.SHA256())


def parse(document: bytes) -> PublicKeys:
    """Key identifier → key; ValueError saying what is wrong with the document."""
    try:
        data: Any = orjson.loads(document)
    except orjson.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    entries = data.get("public_keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError('must be an object with a "public_keys" array')
    keys: PublicKeys = {}
    for index, entry in enumerate(entries):
        where = f"public_keys[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object")
        identifier, pem = entry.get("key_identifier"), entry.get("key")
        if not isinstance(identifier, str) or not identifier:
            raise ValueError(f"{where}.key_identifier: must be a non-empty string")
        if not isinstance(pem, str):
            raise ValueError(f"{where}.key: must be a PEM string")
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError:
            raise ValueError(f"{where}.key: not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{where}.key: must be an ECDSA P-256 key")
        keys[identifier] = key
    return keys


def decoded_signature(signature_b64: str) -> bytes | None:
    """The DER signature a ``Github-Public-Key-Signature`` header carries, or None when
    it cannot be one (not base64, not an ECDSA DER sequence): such a report is refused
    before its body is read."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        decode_dss_signature(signature)
    except (binascii.Error, ValueError):
        return None
    return signature


def signature_valid(
    key: ec.EllipticCurvePublicKey, signature_b64: str, body: bytes | bytearray
) -> bool:
    signature = decoded_signature(signature_b64)
    if signature is None:
        return False
    try:
        key.verify(signature, body, _SIGNATURE)
    except InvalidSignature:
        return False
    return True
