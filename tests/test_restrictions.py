"""The pure rules of restricted keys: scopes compiled from config, allowed addresses,
and the networks usage counts under (auth/restrictions.py, core/domain.py)."""

from __future__ import annotations

import pytest

from sidecar.auth.restrictions import Restrictions, Scopes
from sidecar.config.model import ScopeRule
from sidecar.core.domain import AllowedNetworks, network_of, usage_network
from sidecar.core.errors import AddressNotAllowed, ScopeNotGranted

SCOPES = Scopes(
    {
        "read": (ScopeRule(methods=("GET", "HEAD"), paths=("/api/v1/analysis/",)),),
        "write": (ScopeRule(methods=("POST", "DELETE"), paths=("/api/v1/analysis/",)),),
        "submit": (ScopeRule(methods=("POST",), paths=("/api/v1/analysis/", "/api/v1/upload")),),
        "all": (ScopeRule(methods=("GET",), paths=("/",)),),
    }
)


@pytest.mark.parametrize(
    ("scopes", "method", "path", "allowed"),
    [
        (("read",), "GET", "/api/v1/analysis/", True),
        (("read",), "GET", "/API/V1/analysis/7", True),  # case-insensitive, like public paths
        (("read",), "GET", "/api/v1/analysisX", False),  # segment by segment
        (("read",), "POST", "/api/v1/analysis/", False),
        (("read", "submit"), "POST", "/api/v1/upload/x", True),
        (("all",), "GET", "/anything", True),
        (("all",), "PUT", "/anything", False),
        (("gone",), "GET", "/api/v1/analysis/", False),  # not configured: grants nothing
        (("gone", "read"), "GET", "/api/v1/analysis/", True),
    ],
)
def test_a_grant_allows_what_one_of_its_scopes_allows(
    scopes: tuple[str, ...], method: str, path: str, allowed: bool
) -> None:
    assert SCOPES.grant(scopes).allows(method, path) is allowed


def test_accepting_scopes_are_sorted_and_a_grant_keeps_only_configured_names() -> None:
    assert SCOPES.accepting("POST", "/api/v1/analysis/1") == ("submit", "write")
    assert SCOPES.accepting("PATCH", "/api/v1/analysis/1") == ()
    grant = SCOPES.grant(("write", "gone", "read"))
    assert grant.names == ("write", "read")
    assert grant.header == b"write read"
    assert SCOPES.missing(("write", "gone")) == ("gone",)


def test_the_address_check_comes_first() -> None:
    restrictions = Restrictions(SCOPES)
    client = "198.51.100.1"
    restrictions.check(("read",), None, "GET", "/api/v1/analysis/", client)
    elsewhere = AllowedNetworks([network_of("203.0.113.0/24")])
    with pytest.raises(AddressNotAllowed):
        restrictions.check(("read",), elsewhere, "POST", "/x", client)
    here = AllowedNetworks([network_of("198.51.100.0/24")])
    with pytest.raises(ScopeNotGranted) as refused:
        restrictions.check(("read",), here, "POST", "/api/v1/analysis/", client)
    assert refused.value.headers() == [(b"x-callcov-accepted-scopes", b"submit,write")]
    with pytest.raises(ScopeNotGranted) as nothing:
        restrictions.check(("read",), None, "PUT", "/elsewhere", client)
    assert nothing.value.headers() == []
    assert restrictions.header(None) == b"*"


@pytest.mark.parametrize(
    ("networks", "client", "allowed"),
    [
        (["203.0.113.0/24"], "203.0.113.255", True),
        (["203.0.113.0/24"], "::ffff:203.0.113.9", True),
        (["::ffff:203.0.113.0/120"], "203.0.113.9", True),  # stored as 203.0.113.0/24
        (["2001:db8::/64"], "2001:db8::1", True),
        (["2001:db8::/64"], "2001:db8:0:1::1", False),
        (["0.0.0.0/0"], "2001:db8::1", False),
        (["127.0.0.1"], None, False),
        (["127.0.0.1"], "unix-socket", False),
        (["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"], "127.0.0.1", True),
        (["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"], "127.0.0.2", False),
        (["10.0.0.0/8", "2001:db8::/32"], "2001:db8:ffff::1", True),
    ],
)
def test_allowed_addresses(networks: list[str], client: str | None, allowed: bool) -> None:
    assert AllowedNetworks(map(network_of, networks)).admits(client) is allowed


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("198.51.100.7", "198.51.100.7/32"),
        ("203.0.113.9/24", "203.0.113.0/24"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:db8::1/64", "2001:db8::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
    ],
)
def test_allowed_addresses_are_normalised(given: str, stored: str) -> None:
    assert str(network_of(given)) == stored


@pytest.mark.parametrize("bad", ["", "1.2.3", "10.0.0.0/33", "fe80::1%eth0", "host.example"])
def test_malformed_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        network_of(bad)


@pytest.mark.parametrize(
    ("client", "network"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("::ffff:203.0.113.77", "203.0.113.0/24"),
        ("2001:db8::1:2:3:4", "2001:db8::/64"),
        (None, None),
        ("not an address", None),
    ],
)
def test_usage_counts_a_client_under_its_24_or_64(client: str | None, network: str | None) -> None:
    assert usage_network(client) == network


def test_every_bad_scope_rule_is_reported_by_its_yaml_path() -> None:
    from sidecar.config.loading import parse
    from sidecar.config.model import ConfigError
    from tests.harness import base_config, merge

    raw = merge(
        base_config(redis_url="redis://127.0.0.1:6379/0", upstream_url="http://127.0.0.1:9000"),
        {
            "auth": {
                "scopes": {
                    "Analysis": [{"methods": ["GET"], "paths": ["/a/"]}],
                    "read": [{"methods": ["get"], "paths": ["a/", "/b//c"]}],
                    "write": [],
                    "submit": [{"methods": [], "paths": ["/a/"], "path": "/x"}],
                    "export": [{"paths": ["/a/"]}],
                }
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        parse(raw, {})
    assert caught.value.problems == [
        "auth.scopes.Analysis: a scope name must match ^[a-z][a-z0-9_.:-]{0,63}$",
        "auth.scopes.export[0].methods: required",
        "auth.scopes.read[0].methods[0]: must match pattern '^[A-Z][A-Z0-9_-]*$'",
        "auth.scopes.read[0].paths[0]: must match pattern '^/'",
        "auth.scopes.read[0].paths[1]: not a normalised path: /b//c",
        "auth.scopes.submit[0].methods: must list at least one",
        "auth.scopes.submit[0].path: unknown key (did you mean paths?)",
        "auth.scopes.write: must list at least one rule",
    ]
