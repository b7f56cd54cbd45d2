"""Key material read from files and checked with ``cryptography`` only: the identity
assertion's signing keys and JWKs, and the secret-scanning report signatures. Pure,
so the config can validate what the adapters will use.
"""

__all__ = ["scanning_signatures", "signing_keys"]
