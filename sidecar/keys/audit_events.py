"""Audit events (SPEC Part 3): their JSON, the chain hash that seals each one, and the
check of a chain (``audit verify``).

An event is stored without its ``id`` (the stream entry id, assigned by Redis when it
is added); readers put it back first. ``hash`` is the hex HMAC-SHA256 of the event's
canonical form: its JSON with sorted keys, without ``id`` and ``hash``, so ``prev``
(the hash of the event before it in the chain) is covered. The HMAC key is
``audit.hmac_secret`` when set, else derived from ``auth.api_keys.hash_secret``
(HMAC(hash_secret, "callcov-audit")): the key-hash secret itself never signs events.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.config.model import Config
from sidecar.core.domain import AuditContext
from sidecar.observability.logs import redact

_DERIVATION = b"callcov-audit"
MAX_USER_AGENT = 512  # a client chooses it: bounded, like everything kept a year
UNSEALED = ("id", "hash")  # the fields the hash does not cover


def audit_key(hash_secret: bytes, hmac_secret: bytes | None = None) -> bytes:
    """The HMAC key of the chain."""
    if hmac_secret:
        return hmac_secret
    return hmac.new(hash_secret, _DERIVATION, hashlib.sha256).digest()


def configured_key(config: Config) -> bytes:
    """The chain's HMAC key as the config sets it."""
    own = config.audit.hmac_secret
    return audit_key(
        config.auth.api_keys.hash_secret.get_secret_value().encode(),
        None if own is None else own.get_secret_value().encode(),
    )


def new_event(
    action: str,
    context: AuditContext,
    *,
    time: str,
    user_id: str,
    key_id: str,
    key_prefix: str,
    **extra: Any,
) -> dict[str, Any]:
    """An event's fields before it is sealed (``prev`` and ``hash`` come at write
    time). ``extra``: ``changes``, ``url``, ``rotated_to``, ``rotated_from``."""
    return {
        "time": time,
        "action": action,
        "actor": {"type": context.actor_type, "id": context.actor_id},
        "user_id": user_id,
        "key_id": key_id,
        "key_prefix": key_prefix,
        "client_ip": context.client_ip,
        "user_agent": _scrubbed(context.user_agent, MAX_USER_AGENT),
        "request_id": context.request_id,
        **{name: _scrubbed(value) for name, value in extra.items()},
    }


def _scrubbed(value: Any, limit: int | None = None) -> Any:
    """Text a client chose (a user agent, a description in ``changes``), with anything
    shaped like a key or a JWT masked as in the logs: an event never holds one."""
    if isinstance(value, str):
        return redact(value)[:limit]
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def canonical(event: Mapping[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in event.items() if k not in UNSEALED}, option=orjson.OPT_SORT_KEYS
    )


def seal_hash(event: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(event), hashlib.sha256).hexdigest()


def sealed(event: Mapping[str, Any], prev: str, key: bytes) -> dict[str, Any]:
    """``event`` with ``prev`` and its ``hash``: ready to store."""
    out = {**event, "prev": prev}
    out["hash"] = seal_hash(out, key)
    return out


def stored(event: Mapping[str, Any]) -> bytes:
    """The JSON kept in the stream entry's ``event`` field."""
    return orjson.dumps(event)


def from_entry(entry_id: str, raw: bytes | str) -> dict[str, Any]:
    """The event of a stream entry, ``id`` first."""
    fields = orjson.loads(raw)
    if not isinstance(fields, dict):
        raise ValueError("not an event object")
    fields.pop("id", None)
    return {"id": entry_id, **fields}


@dataclass(slots=True)
class Problem:
    event_id: str
    message: str

    def __str__(self) -> str:
        return f"event {self.event_id}: {self.message}"


class ChainCheck:
    """Walks one chain oldest first: each event must hash to its ``hash`` (else it was
    edited or forged) and its ``prev`` must be the ``hash`` of the event before it
    (else one was removed or inserted before it). The first problem stops the walk."""

    def __init__(self, key: bytes, start: str = "") -> None:
        self._key = key
        self.last_hash = start
        self.last_id: str | None = None
        self.count = 0
        self.problem: Problem | None = None

    def feed(self, entry_id: str, raw: bytes | str) -> Problem | None:
        if self.problem is not None:
            return self.problem
        try:
            event = from_entry(entry_id, raw)
        except ValueError:
            self.problem = Problem(entry_id, "not an audit event (inserted or edited)")
            return self.problem
        claimed = event.get("hash")
        if not isinstance(claimed, str) or not hmac.compare_digest(
            claimed, seal_hash(event, self._key)
        ):
            self.problem = Problem(
                entry_id, "its hash does not match its content: edited, or forged and inserted"
            )
        elif event.get("prev") != self.last_hash:
            after = f"after {self.last_id}" if self.last_id else "at the start of the chain"
            self.problem = Problem(
                entry_id,
                f"its prev does not link to the event before it ({after}): an event "
                f"was removed before it (the missing event's hash is {event.get('prev')!r}), "
                "or it was inserted",
            )
        else:
            self.last_hash = claimed
            self.last_id = entry_id
            self.count += 1
        return self.problem


_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_U64 = 2**64 - 1


def valid_event_id(text: str) -> bool:
    """A stream entry id as a cursor: ``<ms>-<seq>`` (or ``<ms>``), each a 64-bit
    unsigned number."""
    match = _ID.fullmatch(text)
    return match is not None and all(int(p) <= _U64 for p in match.groups("0"))


def millis_of(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])
