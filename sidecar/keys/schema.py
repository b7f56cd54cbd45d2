"""The Redis schema of key data: key names, the index entry and the Lua scripts that
change keys atomically (the store, store.py, runs them).

Redis data model (every key carries the hash tag ``{callcov-keys}``, so on Redis
Cluster all key data lives in one slot and the Lua scripts below stay atomic; key
data is small and rarely written, so one shard is plenty):

===============================================  ======  ========================================
key                                               type    holds
===============================================  ======  ========================================
``callcov:{callcov-keys}:rec:<id>``               HASH    the audit record: id, user_id, key_prefix,
                                                          hash, description (absent = null),
                                                          is_active (1/0), environment (absent =
                                                          live), created_at, updated_at,
                                                          last_used_at, expires_at (ISO) and
                                                          expires_us (epoch µs), rotated_from,
                                                          rotated_to, revoked_reason, revoked_at
                                                          and any audit fields of the revocation,
                                                          scopes and allowed_ips (JSON lists;
                                                          absent = null)
``callcov:{callcov-keys}:user:<uid>:active:<env>`` ZSET   the user's keys counting against the limit
                                                          of environment <env>, score = expiry in
                                                          epoch µs (``+inf``: none); ZCARD after
                                                          pruning expired scores = the count
``callcov:{callcov-keys}:user:<uid>:active``      SET     the layout before environments (live keys,
                                                          none expiring): moved into ``active:live``
                                                          by the user's next create
``callcov:{callcov-keys}:user:<uid>:all``         ZSET    every id the user ever had, score =
                                                          created µs
``callcov:{callcov-keys}:user:<uid>:canary``      ZSET    the user's canary keys, score = created µs
``callcov:{callcov-keys}:prefix:<prefix>``        HASH    field = HMAC of the full key, value = JSON
                                                          {id, user_id, active, expires_at (epoch
                                                          s), canary (only when true), scopes and
                                                          allowed_ips (only when set)}: what
                                                          verification needs, in one HGET
``callcov:{callcov-keys}:scoped``                 SET     ids of the keys created or updated with
                                                          scopes (the check at start for scopes
                                                          the config no longer has reads these)
``callcov:{callcov-keys}:usage:<id>:<date>``      HASH    requests, rate_limited on that UTC day;
                                                          expires after the longest usage window
``callcov:{callcov-keys}:usage:<id>:<date>:networks`` ZSET  the client networks (/24, /64) of that
                                                          day, score = requests; ``...:seen``:
                                                          score = last seen (epoch s); each kept
                                                          to its top NETWORKS_KEPT, expiring
                                                          with the day's counts
``callcov:revocations`` (pub/sub channel)        —       the HMAC of each key whose verification
                                                          answer changed, for cache eviction
===============================================  ======  ========================================

A prefix maps to a hash of entries, so any number of keys may share a prefix.
A key's restrictions live in its record and, copied, in its index entry: both are
written by the same script, so verification learns them in the same one HGET.
The full key is never stored, only its keyed hash. Records written before
environments and expiry existed (no ``environment``, ``expires_us``) read as live
keys that never expire.

A canary key (record field ``canary: 1``) is in the prefix index like any key, so it
verifies like one, but in neither of the user's ``active`` nor ``all`` sets: it never
counts against the limit and is never listed, except by ``list_canaries``.

Verification is that HGET, keyed by the HMAC of the presented key: there is no second
comparison of secrets after it (one would compare the HMAC with itself). The lookup's
timing can only depend on the HMAC, which nobody can steer without the hash secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sidecar.keys.audit_schema import PRELUDE

NAMESPACE = "callcov:{callcov-keys}"
REVOCATION_CHANNEL = "callcov:revocations"
# What a revocation or rotation left the key as, published right after the hash on
# REVOCATION_CHANNEL (which earlier versions follow): "<hash> 0" when revoked, "<hash>
# <µs>" when usable until then (a rotation's grace). The scripts derive the name.
STATE_CHANNEL = REVOCATION_CHANNEL + ":state"
NEVER = "+inf"  # the score of a key without expiry
USAGE_KEPT_DAYS = 91  # the longest usage window (90 days) and the day in progress
NETWORKS_KEPT = 200  # networks kept per key and day: a bound, far above the 20 shown
US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Keys of the layout before environments move into the live limit set.
ADOPT_LEGACY = """
local function adopt_legacy(legacy, live)
  local ids = redis.call('SMEMBERS', legacy)
  for _, id in ipairs(ids) do redis.call('ZADD', live, '+inf', id) end
  if #ids > 0 then redis.call('DEL', legacy) end
end
"""
# Each write script starts with the audit prelude (audit_schema.py): the audit tail of
# KEYS and ARGV follows the script's own (NARGV is the script's last ARGV), and it replies
# {result, head, event id...}, or {"conflict", head} having changed nothing. The events
# are written after the checks and before the change.
# KEYS: limit set of the key's environment, all, record, prefix index, legacy set, live set,
# scoped set. ARGV: max, id, created µs, hash, now µs, expiry score, record fields..., index
# entry.
CREATE = (
    PRELUDE
    + ADOPT_LEGACY
    + """
local blocked = audit_blocked()
if blocked then return blocked end
adopt_legacy(KEYS[5], KEYS[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return {0, A_PREV} end
local written = audit_write()
redis.call('HSET', KEYS[3], unpack(ARGV, 7, NARGV - 1))
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[NARGV])
if redis.call('HEXISTS', KEYS[3], 'scopes') == 1 then redis.call('SADD', KEYS[7], ARGV[2]) end
return audit_done(1, written)
"""
)
# KEYS: record, the user's canary set, prefix index. ARGV: id, created µs, hash, record
# fields..., index entry. No limit, no listing: a canary is only a trap (auth/credentials.py).
CREATE_CANARY = (
    PRELUDE
    + """
local blocked = audit_blocked()
if blocked then return blocked end
local written = audit_write()
redis.call('HSET', KEYS[1], unpack(ARGV, 4, NARGV - 1))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[NARGV])
return audit_done(1, written)
"""
)
# KEYS: record, limit set, prefix index, legacy set.
# ARGV: owner ('' = any), now ISO, now µs, channel, revoked index entry, reason,
# audit field pairs... Only a key still usable is recorded as revoked (with the reason
# and audit fields); an expired one is just marked inactive, its reason left null.
REVOKE = (
    PRELUDE
    + """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'hash', 'id', 'expires_us')
if not rec[1] then return {0, audit_head()} end
if ARGV[1] ~= '' and rec[1] ~= ARGV[1] then return {0, audit_head()} end
if rec[2] ~= '1' then return {1, audit_head()} end
local blocked = audit_blocked()
if blocked then return blocked end
local written = audit_write()
redis.call('HSET', KEYS[1], 'is_active', '0', 'updated_at', ARGV[2])
if not rec[5] or tonumber(rec[5]) > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[2], 'expires_us', ARGV[3],
    'revoked_reason', ARGV[6], 'revoked_at', ARGV[2], unpack(ARGV, 7, NARGV))
end
redis.call('ZREM', KEYS[2], rec[4])
redis.call('SREM', KEYS[4], rec[4])
redis.call('HSET', KEYS[3], rec[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], rec[3])
redis.call('PUBLISH', ARGV[4] .. ':state', rec[3] .. ' 0')
return audit_done(1, written)
"""
)
# Which values of a record a script expects (as the store read them before building
# index entries from them): a field absent is '', present is '=' .. its value.
EXPECTED = """
local function unchanged(record, fields, first)
  local found = redis.call('HMGET', record, unpack(fields))
  for i, value in ipairs(found) do
    if (value and ('=' .. value) or '') ~= ARGV[first + i - 1] then return false end
  end
  return true
end
"""
# The fields copied from a key into the index entries and the new key by a rotation.
ROTATE_COPIES = ("scopes", "allowed_ips")
# KEYS: old record, limit set, all, new record, old prefix index, new prefix index,
# legacy set, grace set, scoped set. ARGV: owner, now µs, now ISO, old end µs, old end ISO,
# old index entry, channel, old id, old hash, new id, created µs, new hash, new expiry
# score, new index entry, the ROTATE_COPIES expected (EXPECTED), new record fields...
# Returns 1, or 0 / -1 / -2 / -3: not found / not active / already rotated (checked in
# that order: "not active" wins) / restrictions changed since read (read them again).
ROTATE = (
    PRELUDE
    + EXPECTED
    + """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'expires_us', 'rotated_to')
if not rec[1] or rec[1] ~= ARGV[1] then return {0, audit_head()} end
if rec[2] ~= '1' or (rec[3] and tonumber(rec[3]) <= tonumber(ARGV[2])) then
  return {-1, audit_head()}
end
if rec[4] then return {-2, audit_head()} end
if not unchanged(KEYS[1], {'scopes', 'allowed_ips'}, 15) then return {-3, audit_head()} end
local blocked = audit_blocked()
if blocked then return blocked end
local written = audit_write()
redis.call('HSET', KEYS[1], 'rotated_to', ARGV[10], 'updated_at', ARGV[3],
  'expires_us', ARGV[4], 'expires_at', ARGV[5])
redis.call('HSET', KEYS[5], ARGV[9], ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[8])
redis.call('SREM', KEYS[7], ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[2])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[8])
redis.call('PUBLISH', ARGV[7], ARGV[9])
redis.call('PUBLISH', ARGV[7] .. ':state', ARGV[9] .. ' ' .. ARGV[4])
redis.call('HSET', KEYS[4], unpack(ARGV, 17, NARGV))
redis.call('ZADD', KEYS[2], ARGV[13], ARGV[10])
redis.call('ZADD', KEYS[3], ARGV[11], ARGV[10])
redis.call('HSET', KEYS[6], ARGV[12], ARGV[14])
if redis.call('HEXISTS', KEYS[4], 'scopes') == 1 then redis.call('SADD', KEYS[9], ARGV[10]) end
return audit_done(1, written)
"""
)
# The fields a PATCH may change, as the store reads them first (UPDATE checks them).
UPDATE_READS = ("description", "scopes", "allowed_ips", "expires_us", "canary")
# KEYS: record, prefix index, scoped set. ARGV: owner, now µs, now ISO, channel, index
# entry, the UPDATE_READS expected (EXPECTED), number of field pairs to set, pairs...,
# fields to delete... Returns 1, or 0 / -1 / -3: not found / not active (revoked or
# expired) / changed since read (read again). The index entry is replaced and its hash
# published, so every instance drops its cached answer (and re-checks open WebSockets).
UPDATE = (
    PRELUDE
    + EXPECTED
    + """
local rec = redis.call('HMGET', KEYS[1], 'user_id', 'is_active', 'expires_us', 'hash', 'id')
if not rec[1] or rec[1] ~= ARGV[1] then return {0, audit_head()} end
if rec[2] ~= '1' or (rec[3] and tonumber(rec[3]) <= tonumber(ARGV[2])) then
  return {-1, audit_head()}
end
if not unchanged(KEYS[1], {'description', 'scopes', 'allowed_ips', 'expires_us', 'canary'}, 6)
then return {-3, audit_head()} end
local blocked = audit_blocked()
if blocked then return blocked end
local written = audit_write()
local pairs_at = 12
local n = tonumber(ARGV[11])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, pairs_at, pairs_at + 2 * n - 1)) end
if NARGV >= pairs_at + 2 * n then
  redis.call('HDEL', KEYS[1], unpack(ARGV, pairs_at + 2 * n, NARGV))
end
if redis.call('HEXISTS', KEYS[1], 'scopes') == 1 then
  redis.call('SADD', KEYS[3], rec[5])
else
  redis.call('SREM', KEYS[3], rec[5])
end
redis.call('HSET', KEYS[2], rec[4], ARGV[5])
redis.call('PUBLISH', ARGV[4], rec[4])
return audit_done(1, written)
"""
)


def record_key(key_id: str) -> str:
    return f"{NAMESPACE}:rec:{key_id}"


def limit_set_key(user_id: str, environment: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:active:{environment}"


def legacy_active_set_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:active"


def all_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:all"


def grace_set_key(user_id: str) -> str:
    """Rotated keys still in their grace, scored by its end (µs): active, but out of the
    limit sets; listed with the active keys until then."""
    return f"{NAMESPACE}:user:{user_id}:grace"


def canary_keys_key(user_id: str) -> str:
    return f"{NAMESPACE}:user:{user_id}:canary"


def prefix_index_key(prefix: str) -> str:
    return f"{NAMESPACE}:prefix:{prefix}"


def usage_key(key_id: str, day: str) -> str:
    return f"{NAMESPACE}:usage:{key_id}:{day}"


def usage_networks_key(key_id: str, day: str) -> str:
    """The networks the key was used from that day: member = network, score = requests."""
    return f"{NAMESPACE}:usage:{key_id}:{day}:networks"


def usage_seen_key(key_id: str, day: str) -> str:
    """The same networks, score = when last seen (epoch seconds)."""
    return f"{NAMESPACE}:usage:{key_id}:{day}:seen"


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)  # exact, unlike timestamp()


def scoped_keys_key() -> str:
    return f"{NAMESPACE}:scoped"


def index_entry(
    key_id: str,
    user_id: str,
    *,
    active: bool,
    expires_us: int | None = None,
    canary: bool = False,
    scopes: Sequence[str] | None = None,
    allowed_ips: Sequence[str] | None = None,
) -> bytes:
    # Entries written by earlier versions also carry "hash", a copy of their field: ignored.
    entry: dict[str, Any] = {"id": key_id, "user_id": user_id, "active": active}
    if expires_us is not None:
        entry["expires_at"] = expires_us / US
    if canary:
        entry["canary"] = True
    if scopes is not None:
        entry["scopes"] = list(scopes)
    if allowed_ips is not None:
        entry["allowed_ips"] = list(allowed_ips)
    return orjson.dumps(entry)


def list_field(values: Sequence[str]) -> str:
    """A record's ``scopes`` or ``allowed_ips`` field: a JSON list."""
    return orjson.dumps(list(values)).decode()


def expected(value: str | None) -> str:
    """A record field's value as a script's EXPECTED check takes it."""
    return "" if value is None else "=" + value
