"""API keys: their format and checksum, the keyed hash, the in-process cache of verified
keys, the input rules of the key endpoints, the Redis schema and the store (the only
code that reads or writes key data: its writes, its reads and its Redis access),
revocation following and usage bookkeeping; the audit trail of key changes (events,
their chain, writing and reading them).
"""

__all__ = [
    "access",
    "audit_events",
    "audit_reader",
    "audit_schema",
    "audit_trail",
    "cache",
    "calls",
    "canary_events",
    "format",
    "hashing",
    "input",
    "reads",
    "revocations",
    "schema",
    "store",
    "usage",
    "usage_calls",
    "view",
]
