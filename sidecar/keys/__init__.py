"""API keys: their format and checksum, the keyed hash, the in-process cache of verified
keys, the input rules of the key endpoints, the Redis schema and the store (the only
code that reads or writes key data), revocation following and usage bookkeeping.
"""

__all__ = [
    "cache",
    "calls",
    "format",
    "hashing",
    "input",
    "revocations",
    "schema",
    "store",
    "usage",
    "usage_calls",
    "view",
]
