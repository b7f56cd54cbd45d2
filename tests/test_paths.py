"""paths.py: normalisation, the path sent upstream, prefix matching (pure, table-driven)."""

from __future__ import annotations

import pytest

from sidecar.core.paths import PrefixMatcher, matched_form, normalise, upstream_path


@pytest.mark.parametrize(
    ("decoded", "expected"),
    [
        ("/", "/"),
        ("", "/"),
        ("/api/v1/analysis/", "/api/v1/analysis/"),
        ("/api/v1/analysis", "/api/v1/analysis"),
        ("/api/v1/auth/../analysis/", "/api/v1/analysis/"),
        ("/api/v1/auth/./../analysis", "/api/v1/analysis"),
        ("/api/v1/auth/..", "/api/v1/"),
        ("/api/v1/auth/.", "/api/v1/auth/"),
        ("//api///v1//analysis//", "/api/v1/analysis/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/b/../../..", "/"),
        ("\\api\\v1\\auth\\..\\analysis", "/api/v1/analysis"),
        ("/api/v1/auth\\..\\analysis/", "/api/v1/analysis/"),
        ("/api/v1/auth/...", "/api/v1/auth/..."),  # not a dot segment
        ("/api/v1/auth/..;/analysis/", "/api/v1/auth/..;/analysis/"),  # nor is this
        ("/API/V1/Analysis/", "/API/V1/Analysis/"),  # case is kept; matching ignores it
        ("/a b/c?d", "/a b/c?d"),
    ],
)
def test_normalise(decoded: str, expected: str) -> None:
    assert normalise(decoded) == expected


@pytest.mark.parametrize(
    ("raw", "decoded", "expected"),
    [
        # The client's exact bytes when they already mean the normalised path.
        (b"/api/v1/analysis/", "/api/v1/analysis/", b"/api/v1/analysis/"),
        (b"/api/v1/a%20b/c%3Fd", "/api/v1/a b/c?d", b"/api/v1/a%20b/c%3Fd"),
        (b"/api/v1/%7Euser", "/api/v1/~user", b"/api/v1/%7Euser"),
        # Otherwise the normalised path, so the upstream sees what auth decided on.
        (b"/api/v1/auth/../analysis/", "/api/v1/auth/../analysis/", b"/api/v1/analysis/"),
        (b"/api/v1/auth/%2e%2e/analysis/", "/api/v1/auth/../analysis/", b"/api/v1/analysis/"),
        (b"/api/v1/auth/%2E%2E/analysis/", "/api/v1/auth/../analysis/", b"/api/v1/analysis/"),
        (b"/api/v1/auth%2f..%2fanalysis/", "/api/v1/auth/../analysis/", b"/api/v1/analysis/"),
        (b"/api/v1/files/a%2Fb", "/api/v1/files/a/b", b"/api/v1/files/a/b"),
        (b"/api/v1/auth%5C..%5Canalysis", "/api/v1/auth\\..\\analysis", b"/api/v1/analysis"),
        (b"//api//v1", "//api//v1", b"/api/v1"),
        (b"/api\\v1", "/api\\v1", b"/api/v1"),
        (b"/x%00y", "/x\x00y", b"/x%00y"),
        (b"/a%20b/%2e/%3F%23%25", "/a b/./?#%", b"/a%20b/%3F%23%25"),
    ],
)
def test_upstream_path(raw: bytes, decoded: str, expected: bytes) -> None:
    assert upstream_path(raw, decoded, normalise(decoded)) == expected


PUBLIC = PrefixMatcher(("/api/v1/auth/", "/docs"))


@pytest.mark.parametrize(
    ("path", "index"),
    [
        ("/api/v1/auth/login", 0),
        ("/api/v1/auth/", 0),
        ("/api/v1/auth", 0),
        ("/api/v1/auth/refresh/deeper", 0),
        ("/API/V1/AUTH/login", 0),  # case-insensitive: /API/... cannot dodge a rule
        ("/docs", 1),
        ("/docs/x", 1),
        ("/api/v1/authority", None),  # segment-aware
        ("/api/v1/auth-login", None),
        ("/api/v1/analysis/", None),
        ("/api/v1", None),
        ("/api/v1/", None),
        ("/", None),
        ("/docsx", None),
        ("/api/v1/auth/..;/analysis/", 0),  # a literal segment, as the upstream sees it
    ],
)
def test_prefix_matcher(path: str, index: int | None) -> None:
    assert PUBLIC.match(path) == index
    assert PUBLIC.matches(path) is (index is not None)


@pytest.mark.parametrize(
    "trick",
    [
        "/api/v1/auth/../analysis/",
        "/api/v1/auth/./../analysis/",
        "/api/v1/auth//../analysis/",
        "/api/v1/auth\\..\\analysis/",
        "/api/v1/auth/../../v1/analysis/",
        "//api/v1/auth/../analysis/",
    ],
)
def test_public_prefix_never_matches_a_path_that_leaves_it(trick: str) -> None:
    assert not PUBLIC.matches(normalise(trick))


def test_root_prefix_matches_everything() -> None:
    assert PrefixMatcher(("/",)).matches("/anything")
    assert not PrefixMatcher(()).matches("/anything")


@pytest.mark.parametrize(
    ("prefix", "form"),
    [
        ("/", ""),
        ("//", ""),
        ("///", ""),
        ("/x/..", ""),
        ("/API//v1/", "/api/v1"),
        ("/a/./b", "/a/b"),
    ],
)
def test_the_matched_form_of_a_prefix_is_normalised(prefix: str, form: str) -> None:
    assert matched_form(prefix) == form
    # "" covers everything: that is why config validation refuses it for public paths.
    assert PrefixMatcher((prefix,)).matches("/anything") == (form == "")
