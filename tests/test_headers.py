"""headers.py: what goes upstream and what comes back (pure, table-driven)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from sidecar.config.loading import parse
from sidecar.proxy.headers import HeaderRules, Headers, canonical, connection_listed, request_id
from tests.harness import HASH_SECRET, JWT_SECRET, merge

RID = b"req-1"


def rules(**override: Any) -> HeaderRules:
    raw = {
        "upstream": {"url": "http://127.0.0.1:9000"},
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "auth": {"jwt": {"secret": JWT_SECRET}, "api_keys": {"hash_secret": HASH_SECRET}},
    }
    return HeaderRules(parse(merge(raw, override), env={}))


def upstream(
    incoming: Headers,
    *,
    header_rules: HeaderRules | None = None,
    forward_authorization: bool = True,
    client: str | None = "203.0.113.7",
    scheme: str = "http",
) -> Headers:
    return (header_rules or rules()).upstream_request(
        incoming,
        forward_authorization=forward_authorization,
        client=client,
        scheme=scheme,
        request_id=RID,
    )


def names(headers: Headers) -> list[bytes]:
    return [n.lower() for n, _ in headers]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


@pytest.mark.parametrize(
    "forged",
    [
        b"X-CallCov-User-Id", b"x-callcov-user-id", b"X-CALLCOV-USER-ID", b"X_CallCov_User_Id",
        b"x-callcov_user-id", b"X-CallCov-Auth-Method", b"x_callcov_auth_method",
        b"X-CallCov-Key-Id", b"X_CALLCOV_KEY_ID",
    ],
)  # fmt: skip
def test_identity_headers_in_any_spelling_are_stripped(forged: bytes) -> None:
    out = upstream([(forged, b"admin"), (b"x-other", b"kept")])
    assert [canonical(n) for n in names(out)].count(canonical(forged)) == 0
    assert (b"x-other", b"kept") in out


def test_configured_identity_names_are_the_ones_stripped() -> None:
    custom = rules(identity={"headers": {"user_id": "X-User", "key_id": "X-Key"}})
    out = upstream(
        [(b"x_user", b"forged"), (b"X-KEY", b"forged"), (b"x-callcov-auth-method", b"forged")],
        header_rules=custom,
    )
    assert b"x_user" not in names(out) and b"x-key" not in names(out)
    assert b"x-callcov-auth-method" not in names(out)  # still a default name
    assert (custom.user_id, custom.key_id) == (b"x-user", b"x-key")


@pytest.mark.parametrize("spelling", [b"X-API-Key", b"x-api-key", b"X_API_KEY", b"x-api_key"])
def test_api_key_header_is_never_forwarded(spelling: bytes) -> None:
    assert canonical(spelling) not in [canonical(n) for n in names(upstream([(spelling, b"k")]))]


@pytest.mark.parametrize(
    ("configured", "requested", "forwarded"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_authorization_forwarding(configured: bool, requested: bool, forwarded: bool) -> None:
    header_rules = rules(upstream={"forward_authorization": configured})
    out = upstream(
        [(b"Authorization", b"Bearer eyJ.x.y")],
        header_rules=header_rules,
        forward_authorization=requested,
    )
    assert (values(out, b"authorization") == [b"Bearer eyJ.x.y"]) is forwarded


HOP_BY_HOP_REQUEST: Headers = [
    (b"Connection", b"keep-alive, X-Hop-One ,x_hop_two"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"h2c"),
    (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
    (b"X-Hop-One", b"1"),
    (b"X-Hop-Two", b"2"),
    (b"X-End-To-End", b"stays"),
]


def test_hop_by_hop_request_headers_are_dropped() -> None:
    out = upstream(HOP_BY_HOP_REQUEST)
    dropped = {canonical(n) for n, _ in HOP_BY_HOP_REQUEST} - {b"x-end-to-end"}
    assert not dropped & {canonical(n) for n in names(out)}
    assert (b"X-End-To-End", b"stays") in out


def test_end_to_end_headers_keep_order_case_and_repeats() -> None:
    incoming: Headers = [
        (b"Content-Type", b"audio/wav"),
        (b"X-Multi", b"a"),
        (b"Cookie", b"s=1"),
        (b"X-Multi", b"B"),
        (b"Accept-Encoding", b"gzip"),
        (b"Content-Length", b"10"),
    ]
    out = upstream(incoming)
    assert out[: len(incoming)] == incoming


def test_forwarding_headers_from_an_untrusted_peer_are_replaced() -> None:
    out = upstream(
        [
            (b"Host", b"api.callcov.example"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"X-Request-ID", b"client-chosen"),
        ],
        scheme="http",
    )
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-forwarded-proto") == [b"http"]
    assert values(out, b"x-forwarded-host") == [b"api.callcov.example"]
    assert values(out, b"forwarded") == []
    assert values(out, b"host") == []  # the upstream client sets the upstream's Host
    assert values(out, b"x-request-id") == [RID]


@pytest.mark.parametrize(
    ("trusted", "client", "expected_for", "expected_proto", "expected_host"),
    [
        (["10.0.0.0/8"], "10.1.2.3", b"6.6.6.6, 7.7.7.7, 10.1.2.3", b"https", b"orig.example"),
        (["10.0.0.1"], "10.0.0.2", b"10.0.0.2", b"http", b"sidecar.example"),
        (["::1"], "::1", b"6.6.6.6, 7.7.7.7, ::1", b"https", b"orig.example"),
        (["10.0.0.0/8"], "not-an-ip", b"not-an-ip", b"http", b"sidecar.example"),
    ],
)
def test_forwarding_headers_from_a_trusted_proxy_are_extended(
    trusted: list[str],
    client: str,
    expected_for: bytes,
    expected_proto: bytes,
    expected_host: bytes,
) -> None:
    header_rules = rules(server={"trusted_proxies": trusted})
    out = upstream(
        [
            (b"host", b"sidecar.example"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"X-Forwarded-For", b"7.7.7.7"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"orig.example"),
        ],
        header_rules=header_rules,
        client=client,
    )
    assert values(out, b"x-forwarded-for") == [expected_for]
    assert values(out, b"x-forwarded-proto") == [expected_proto]
    assert values(out, b"x-forwarded-host") == [expected_host]


@pytest.mark.parametrize(
    ("trusted", "client", "forwarded", "real_ip"),
    [
        ([], "203.0.113.7", [b"6.6.6.6"], b"203.0.113.7"),  # an untrusted peer: itself
        (["10.0.0.0/8"], "10.0.0.2", [b"6.6.6.6, 198.51.100.7"], b"198.51.100.7"),
        (["10.0.0.0/8"], "10.0.0.2", [b"198.51.100.7", b"10.0.0.9"], b"198.51.100.7"),
        (["10.0.0.0/8"], "10.0.0.2", [], b"10.0.0.2"),  # a trusted proxy that said nothing
    ],
)
@pytest.mark.parametrize("spelling", [b"X-Real-IP", b"x-real-ip", b"X_Real_Ip"])
def test_x_real_ip_is_the_resolved_client_never_the_clients_own(
    trusted: list[str], client: str, forwarded: list[bytes], real_ip: bytes, spelling: bytes
) -> None:
    incoming = [(spelling, b"6.6.6.6"), *((b"X-Forwarded-For", f) for f in forwarded)]
    out = upstream(incoming, header_rules=rules(server={"trusted_proxies": trusted}), client=client)
    assert [(n, v) for n, v in out if canonical(n) == b"x-real-ip"] == [(b"x-real-ip", real_ip)]


def test_no_client_address_means_no_invented_x_forwarded_for() -> None:
    out = upstream([(b"x-forwarded-for", b"6.6.6.6")], client=None, scheme="https")
    assert values(out, b"x-forwarded-for") == []
    assert values(out, b"x-real-ip") == []
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == []


def test_downstream_response_drops_hop_by_hop_and_what_the_sidecar_sets() -> None:
    ours: Headers = [(b"x-request-id", RID), (b"x-ratelimit-limit", b"100")]
    out = HeaderRules.downstream_response(
        [
            (b"Content-Type", b"application/json"),
            (b"Connection", b"keep-alive, X-Internal"),
            (b"X-Internal", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Upgrade", b"h2c"),
            (b"Trailer", b"X-Sum"),
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"X-Request-ID", b"upstream-made"),
            (b"X-RateLimit-Limit", b"5"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"2"),
        ],
        ours,
    )
    assert out == [
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"2"),
        *ours,
    ]


def test_connection_listed_normalises_tokens() -> None:
    listed = connection_listed([(b"Connection", b" Keep-Alive ,X_Foo,, close"), (b"x", b"y")])
    assert listed == {b"keep-alive", b"x-foo", b"close"}


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        (b"abc-123", True),
        (b"A.b_c:d-1", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"new\nline", False),
        (b"\xff\xfe", False),
        (None, False),
    ],
)
def test_request_id_is_propagated_only_when_well_formed(incoming: bytes | None, kept: bool) -> None:
    result = request_id(incoming)
    if kept:
        assert result == incoming
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", result)
        assert request_id(incoming) != result  # freshly generated each time


def test_generated_request_ids_differ_in_a_forked_child() -> None:
    """Two processes forked from one must not hand out the same ids."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, request_id(None))
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64)
    os.close(read_end)
    assert child_id != request_id(None)
    assert re.fullmatch(rb"[0-9a-f]{32}", child_id)
