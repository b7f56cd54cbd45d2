"""What a restricted key may do (SPEC Part 3): its scopes, compiled once from
``auth.scopes``, and its allowed addresses.

A scope is a name for rules; a rule allows some methods on some prefixes of the
normalised path (matched like ``auth.public_paths``). A key's scopes that the config
no longer names grant nothing, so removing a scope never widens a key. The address
check comes first, then the scope check; each refusal is a KeyRestricted (403).

Pure: no I/O. A key's scope list is compiled into a Grant on first use and kept, and
its addresses into integers when it is verified (AllowedNetworks), so the per-request
check is a dict lookup and two short loops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sidecar.config.model import ScopeRule
from sidecar.core.domain import AllowedNetworks
from sidecar.core.errors import AddressNotAllowed, ScopeNotGranted
from sidecar.core.paths import PrefixMatcher

UNRESTRICTED = b"*"  # X-CallCov-Key-Scopes of a key without scopes
_GRANTS_KEPT = 10_000  # distinct scope lists compiled and kept; past it, start over

_Rule = tuple[frozenset[str], tuple[str, ...]]  # methods, path prefixes


class Grant:
    """A key's scope list as compiled: the scopes that still exist, and for each method
    the path prefixes they allow it on, in one matcher."""

    __slots__ = ("_by_method", "header", "names")

    def __init__(self, names: tuple[str, ...], rules: tuple[_Rule, ...]) -> None:
        self.names = names  # configured ones only, in the key's order
        self.header = " ".join(names).encode()  # X-CallCov-Key-Scopes
        paths: dict[str, list[str]] = {}
        for methods, prefixes in rules:
            for method in methods:
                paths.setdefault(method, []).extend(prefixes)
        self._by_method = {method: PrefixMatcher(tuple(p)) for method, p in paths.items()}

    def allows(self, method: str, normalised: str) -> bool:
        paths = self._by_method.get(method)
        return paths is not None and paths.matches(normalised)


class Scopes:
    """``auth.scopes`` compiled: every scope's rules, and the grants of key scope lists."""

    def __init__(self, config: Mapping[str, Sequence[ScopeRule]]) -> None:
        self._rules: dict[str, tuple[_Rule, ...]] = {
            name: tuple((frozenset(rule.methods), rule.paths) for rule in rules)
            for name, rules in config.items()
        }
        self._matchers = {
            name: tuple((methods, PrefixMatcher(paths)) for methods, paths in rules)
            for name, rules in self._rules.items()
        }
        self.names = frozenset(self._rules)
        self._grants: dict[tuple[str, ...], Grant] = {}

    def grant(self, scopes: tuple[str, ...]) -> Grant:
        grant = self._grants.get(scopes)
        if grant is None:
            kept = tuple(name for name in scopes if name in self._rules)
            grant = Grant(kept, tuple(rule for name in kept for rule in self._rules[name]))
            if len(self._grants) >= _GRANTS_KEPT:
                self._grants.clear()
            self._grants[scopes] = grant
        return grant

    def accepting(self, method: str, normalised: str) -> tuple[str, ...]:
        """The configured scopes that allow ``method`` on ``normalised``, sorted."""
        return tuple(
            sorted(
                name
                for name, rules in self._matchers.items()
                if any(method in methods and paths.matches(normalised) for methods, paths in rules)
            )
        )

    def missing(self, scopes: tuple[str, ...]) -> tuple[str, ...]:
        """The names in ``scopes`` the config does not have."""
        return tuple(name for name in scopes if name not in self._rules)


class Restrictions:
    """The checks a restricted key's request goes through after authentication and
    before the rate limit, on every path that admits requests."""

    def __init__(self, scopes: Scopes) -> None:
        self.scopes = scopes

    def check(
        self,
        scopes: tuple[str, ...] | None,
        networks: AllowedNetworks | None,
        method: str,
        normalised: str,
        client: str | None,
    ) -> None:
        """Raise AddressNotAllowed, then ScopeNotGranted, when the key may not make this
        request from ``client`` (its address as the failed-auth limit reads it)."""
        if networks is not None and not networks.admits(client):
            raise AddressNotAllowed()
        if scopes is not None and not self.scopes.grant(scopes).allows(method, normalised):
            raise ScopeNotGranted(self.scopes.accepting(method, normalised))

    def header(self, scopes: tuple[str, ...] | None) -> bytes:
        """The X-CallCov-Key-Scopes value for a key: its scopes that exist, or ``*``."""
        return UNRESTRICTED if scopes is None else self.scopes.grant(scopes).header
