"""The audit trail's Redis layout and the Lua every audited write script starts with
(SPEC Part 3; the design is in docs/security/audit.md).

===================================================  ======  ===================================
key                                                   type    holds
===================================================  ======  ===================================
``callcov:{callcov-keys}:audit``                      STREAM  the chain: every event, oldest
                                                              first (entry field ``event``)
``callcov:{callcov-keys}:audit:head``                 STRING  the ``hash`` of the chain's newest
                                                              event
``callcov:{callcov-keys}:audit:anchor``               STRING  the newest event retention trimmed
                                                              (its JSON): where the chain starts
``callcov:{callcov-keys}:audit:key:<id>``             ZSET    the entry ids of one key's events,
                                                              zero-padded (``<ms:15>-<seq:10>``,
                                                              score 0: ordered by ZRANGEBYLEX);
                                                              expires ``audit.retention_days``
                                                              after its last event
===================================================  ======  ===================================

Every key carries the key data's hash tag, so on a Cluster an event and the change it
records are written by one script on one shard: atomically. One chain for the whole
store: its stream ids are the global order the admin feed pages through. An event is
stored once; a key's history is an index of ids into the chain (a small sorted set
costs far less than a stream per key, whose first entry alone allocates kilobytes).

Redis' Lua cannot compute an HMAC, so events are sealed by the caller: the script gets
the head it expects (``prev``) and the sealed events, and writes them only if the head
is still that one, else it changes nothing and answers ``{"conflict", head}``; the
caller seals again on the head it was given (optimistic concurrency, audit_trail.py).
"""

from __future__ import annotations

NAMESPACE = "callcov:{callcov-keys}"  # schema.NAMESPACE: the key data's one slot
AUDIT_STREAM = f"{NAMESPACE}:audit"
AUDIT_HEAD = f"{NAMESPACE}:audit:head"
AUDIT_ANCHOR = f"{NAMESPACE}:audit:anchor"
KEY_EVENTS_PREFIX = f"{NAMESPACE}:audit:key:"
TRIM_BATCH = 100  # events retention removes per write at most: a write stays O(1)
CONFLICT = b"conflict"


def key_events_key(key_id: str) -> str:
    return KEY_EVENTS_PREFIX + key_id


def padded(entry_id: str) -> str:
    """An entry id as its key index holds it: sorts as text as it does as an id."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):010d}"


def unpadded(member: str) -> str:
    ms, _, seq = member.partition("-")
    return f"{int(ms)}-{int(seq)}"


# The audit tail of KEYS and ARGV (audit_trail.py). ARGV ends with the n events' JSON,
# their n hashes, then prev (the head they were sealed on), n, the retention's last
# entry id to trim ('' = no trimming this time), the same as a key index member, and the
# retention in ms. KEYS end with the head, the chain's stream, the anchor and, per
# event, its key's index. The script itself reads ARGV[1..NARGV] and KEYS[1..AK].
PRELUDE = """
local A_N = tonumber(ARGV[#ARGV - 3])
local A_PREV, A_TRIM, A_MIN, A_TTL = ARGV[#ARGV - 4], ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local NARGV = #ARGV - 5 - 2 * A_N
local AK = #KEYS - 3 - A_N
local function audit_head()
  return redis.call('GET', KEYS[AK + 1]) or ''
end
-- nil when the events can be written; else the reply: the head moved (another writer
-- sealed first), or a stream key holds something else (checked before any write, so
-- such a failure leaves neither the change nor an event).
local function audit_blocked()
  local head = audit_head()
  if head ~= A_PREV then return {'conflict', head} end
  for i = AK + 2, #KEYS do
    if i ~= AK + 3 then
      local kind = redis.call('TYPE', KEYS[i])['ok']
      local wanted = (i == AK + 2) and 'stream' or 'zset'
      if kind ~= 'none' and kind ~= wanted then
        return redis.error_reply('WRONGTYPE audit key ' .. KEYS[i] .. ' is a ' .. kind)
      end
    end
  end
  return nil
end
local function audit_padded(id)
  local ms, seq = string.match(id, '(%d+)-(%d+)')
  return string.rep('0', 15 - #ms) .. ms .. '-' .. string.rep('0', 10 - #seq) .. seq
end
-- Retention first (oldest first, a bounded batch; the newest trimmed event becomes the
-- anchor), then the events; returns {head, id...} for the script's reply.
local function audit_write()
  local stream = KEYS[AK + 2]
  if A_TRIM ~= '' then
    local old = redis.call('XRANGE', stream, '-', A_TRIM, 'COUNT', TRIM_BATCH)
    if #old > 0 then
      local last = old[#old]
      local ms, seq = string.match(last[1], '(%d+)-(%d+)')
      redis.call('XTRIM', stream, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
      redis.call('SET', KEYS[AK + 3], last[2][2])
    end
  end
  local out = {A_PREV}
  for i = 1, A_N do
    local id = redis.call('XADD', stream, '*', 'event', ARGV[NARGV + i])
    local index = KEYS[AK + 3 + i]
    redis.call('ZADD', index, 0, audit_padded(id))
    if A_TRIM ~= '' then redis.call('ZREMRANGEBYLEX', index, '-', '(' .. A_MIN) end
    redis.call('PEXPIRE', index, A_TTL)
    out[1] = ARGV[NARGV + A_N + i]
    out[#out + 1] = id
  end
  redis.call('SET', KEYS[AK + 1], out[1])
  return out
end
-- The reply of a script that recorded its change: {result, head, id...}.
local function audit_done(result, written)
  table.insert(written, 1, result)
  return written
end
""".replace("TRIM_BATCH", str(TRIM_BATCH))

# An event with no change of key data to go with it (canary.used).
EVENT_ONLY = (
    PRELUDE
    + """
local blocked = audit_blocked()
if blocked then return blocked end
return audit_done(1, audit_write())
"""
)
