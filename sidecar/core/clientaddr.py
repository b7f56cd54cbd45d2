"""Who the client is, for decisions made per client: the peer address, or, when the
peer is a trusted proxy, the address that proxy saw (``X-Forwarded-For``, read right
to left as uvicorn's proxy_headers middleware does, skipping trusted hops).

Pure: no I/O. Compiled once from ``server.trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

_IPV6_GROUP = 64  # one customer's allocation: a /64 costs an attacker nothing to rotate within


class TrustedProxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def is_trusted(self, address: str | None) -> bool:
        if not self._networks or address is None:
            return False
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self._networks)

    def client(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The client's address: the peer's own, unless the peer is a trusted proxy."""
        if not self.is_trusted(peer):
            return peer
        return self.behind(
            peer, [value for name, value in headers if name.lower() == b"x-forwarded-for"]
        )

    def behind(self, peer: str | None, forwarded_for: Iterable[bytes]) -> str | None:
        """The client behind the trusted proxy ``peer``, from the values of its
        ``X-Forwarded-For`` headers in order."""
        hops: list[str] = []
        for value in forwarded_for:
            hops += (hop.strip() for hop in value.decode("latin-1").split(","))
        for hop in reversed(hops):
            if hop and not self.is_trusted(hop):
                return hop
        return hops[0] if hops and hops[0] else peer  # every hop trusted: the farthest


def client_group(address: str | None) -> str:
    """The key a per-client limit counts under: an IPv4 address as is, an IPv6 address
    by its /64 (an IPv4-mapped one as its IPv4 address). Anything unparseable counts as
    itself, so it cannot dodge the limit by being odd."""
    if address is None:
        return "-"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, _IPV6_GROUP), strict=False))
    return str(parsed)
