"""The key rules every layer shares: value types, their JSON, and the limits on input.

Pure: no I/O, no adapters. The store, the cache, the API, the CLI and the logs import
these instead of restating them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

KEYS_API_PATH = "/api/v1/api-keys"  # served by the sidecar itself, JWT only; never public
# "sk_live_" + 6 characters: the public part of a key, shown in listings and logs.
PREFIX_LENGTH = 14
MAX_DESCRIPTION = 500
USER_ID_RULE = "a user id is 1 to 256 printable ASCII characters, without spaces"
_USER_ID = re.compile(r"[\x21-\x7e]{1,256}")


LIVE = "live"
TEST = "test"
ENVIRONMENTS = (LIVE, TEST)
Environment = Literal["live", "test"]
# Key lifecycle (SPEC Part 2): expiry at least this far ahead (the longest is
# configured: auth.api_keys.max_lifetime_days), rotation grace, usage window.
MIN_EXPIRY_LEAD_SECONDS = 60
MAX_GRACE_SECONDS = 7 * 86400
DEFAULT_GRACE_SECONDS = 86400
MAX_USAGE_DAYS = 90
DEFAULT_USAGE_DAYS = 30
# Revocation reasons recorded on the key (the first one stays).
REVOKED = "revoked"
LEAKED = "leaked"
# Least privilege (SPEC Part 3): a key's allowed addresses, and where it is used from.
MAX_ALLOWED_IPS = 100
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAPPED_V4 = 96  # ::ffff:0:0/96 holds the IPv4-mapped addresses


def network_of(text: str) -> Network:
    """An allowed address or network as stored and compared: a CIDR with its host bits
    cleared (an address is its /32 or /128); IPv4-mapped IPv6 as IPv4, as a client's
    address is read. ValueError for anything else (a zone index ``%eth0`` included)."""
    if "%" in text:
        raise ValueError("a zone index is not allowed")
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= _MAPPED_V4:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED_V4))
    return network


MAX_USAGE_NETWORKS = 20  # networks a key's usage shows, most requests first
_USAGE_PREFIX = {4: 24, 6: 64}  # one customer's allocation: a /24 or a /64


def usage_network(text: str | None) -> str | None:
    """The network a client address counts under in a key's usage (IPv4 /24, IPv6 /64,
    IPv4-mapped IPv6 as IPv4); None for no address."""
    address = address_of(text)
    if address is None:
        return None
    return str(ipaddress.ip_network((address, _USAGE_PREFIX[address.version]), strict=False))


class AllowedNetworks:
    """A key's allowed addresses, compiled once for the check every request of the key
    makes: each network as its (address, mask) integers, compared with the client's
    address as an integer (parsed once per distinct client, ``_address_bits``)."""

    __slots__ = ("_answers", "_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._v4 = tuple(_bits(n) for n in self.networks if n.version == 4)
        self._v6 = tuple(_bits(n) for n in self.networks if n.version == 6)
        # A key is used from a few addresses again and again: each one's answer is kept.
        self._answers: dict[str | None, bool] = {}

    def admits(self, client: str | None) -> bool:
        answer = self._answers.get(client)
        if answer is None:
            answer = self._admits(client)
            if len(self._answers) >= _ANSWERS_KEPT:
                self._answers.clear()
            self._answers[client] = answer
        return answer

    def _admits(self, client: str | None) -> bool:
        parsed = _address_bits(client)
        if parsed is None:
            return False
        version, value = parsed
        for network, mask in self._v4 if version == 4 else self._v6:
            if value & mask == network:
                return True
        return False

    def __repr__(self) -> str:
        return f"AllowedNetworks({[str(n) for n in self.networks]})"


def _bits(network: Network) -> tuple[int, int]:
    return int(network.network_address), int(network.netmask)


_ANSWERS_KEPT = 256  # client addresses a key's AllowedNetworks remembers; past it, start over
_ADDRESSES: dict[str, tuple[int, int] | None] = {}
_ADDRESSES_KEPT = 10_000  # distinct client addresses parsed and kept; past it, start over


def _address_bits(text: str | None) -> tuple[int, int] | None:
    """(IP version, the address as an integer) of a client address, or None."""
    if text is None:
        return None
    try:
        return _ADDRESSES[text]
    except KeyError:
        pass
    address = address_of(text)
    parsed = None if address is None else (address.version, int(address))
    if len(_ADDRESSES) >= _ADDRESSES_KEPT:
        _ADDRESSES.clear()
    _ADDRESSES[text] = parsed
    return parsed


def address_of(text: str | None) -> Address | None:
    """A client's address (an IPv4-mapped IPv6 one as IPv4); None when it is none."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def key_prefix(value: str) -> str:
    return value[:PREFIX_LENGTH]


def valid_user_id(value: str) -> bool:
    return _USER_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """What verification learns about a key; holds no secret."""

    id: str
    user_id: str
    prefix: str
    active: bool
    expires_at: float | None  # epoch seconds
    canary: bool = False
    environment: str = LIVE
    scopes: tuple[str, ...] | None = None  # None: unrestricted
    networks: AllowedNetworks | None = None  # None: from any address

    def usable_at(self, now: float) -> bool:
        return self.active and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    api_key: str
    key_prefix: str
    description: str | None
    created_at: str
    expires_at: str | None = None
    environment: str = LIVE
    scopes: tuple[str, ...] | None = None
    allowed_ips: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"CreatedKey(id={self.id!r}, key_prefix={self.key_prefix!r})"

    def as_json(self) -> dict[str, Any]:
        """The create answer: the only place the full key is ever shown."""
        return {
            "id": self.id,
            "api_key": self.api_key,
            "key_prefix": self.key_prefix,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "environment": self.environment,
            "scopes": None if self.scopes is None else list(self.scopes),
            "allowed_ips": None if self.allowed_ips is None else list(self.allowed_ips),
        }


@dataclass(frozen=True, slots=True)
class DailyUsage:
    date: str  # YYYY-MM-DD, UTC
    requests: int
    rate_limited: int


@dataclass(frozen=True, slots=True)
class NetworkUsage:
    network: str  # CIDR: a /24 or a /64
    requests: int
    last_seen: str  # ISO 8601 UTC


def usage_json(
    key_id: str, prefix: str, days: list[DailyUsage], networks: list[NetworkUsage]
) -> dict[str, Any]:
    return {
        "id": key_id,
        "key_prefix": prefix,
        "days": [
            {"date": d.date, "requests": d.requests, "rate_limited": d.rate_limited} for d in days
        ],
        "total_requests": sum(d.requests for d in days),
        "networks": [
            {"network": n.network, "requests": n.requests, "last_seen": n.last_seen}
            for n in networks
        ],
    }


def expired_json() -> dict[str, Any]:
    return {"message": "API key expired successfully", "success": True}


def key_list_json(keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {"api_keys": keys, "total": len(keys)}


# Audit trail (SPEC Part 3): who acts, and the actions recorded.
ActorType = Literal["user", "operator", "secret_scanning", "client"]
USER: ActorType = "user"
OPERATOR: ActorType = "operator"  # the CLI
SECRET_SCANNING: ActorType = "secret_scanning"
CLIENT: ActorType = "client"  # whoever used a canary
KEY_CREATED, KEY_UPDATED, KEY_ROTATED = "key.created", "key.updated", "key.rotated"
KEY_REVOKED, KEY_LEAKED = "key.revoked", "key.leaked"
CANARY_CREATED, CANARY_USED = "canary.created", "canary.used"


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who made a change and from where, carried from the request (or the CLI) to the
    store, which writes it into the change's event. Holds no credential."""

    actor_type: ActorType
    actor_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


OPERATOR_CONTEXT = AuditContext(OPERATOR)  # the CLI: no address, no request
