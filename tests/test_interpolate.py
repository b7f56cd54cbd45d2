"""``${VAR}`` / ``${VAR:-default}`` interpolation of parsed YAML values."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.interpolate import interpolate

ENV = {"HOST": "cache", "PORT": "6380", "EMPTY": ""}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${HOST}", "cache"),
        ("redis://${HOST}:${PORT}/0", "redis://cache:6380/0"),
        ("${MISSING:-fallback}", "fallback"),
        ("${MISSING:-}", ""),
        ("${EMPTY:-fallback}", "fallback"),  # as in docker compose: empty counts as unset
        ("${HOST:-fallback}", "cache"),
        ("${MISSING:-http://a:1/b}", "http://a:1/b"),
        ("$${HOST}", "${HOST}"),  # escaped
        ("price: $$5 or $5", "price: $5 or $5"),
        ("$HOST", "$HOST"),  # only the braced form is a reference
        ("no references", "no references"),
    ],
)
def test_string_values(value: str, expected: str) -> None:
    problems: list[str] = []
    assert interpolate(value, ENV, "key", problems) == expected
    assert problems == []


def test_unset_and_empty_variables_are_problems_with_their_path() -> None:
    problems: list[str] = []
    raw = {"auth": {"jwt": {"secret": "${JWT}"}}, "paths": ["/a", "${EMPTY}"]}
    result = interpolate(raw, ENV, problems=problems)
    assert result == {"auth": {"jwt": {"secret": ""}}, "paths": ["/a", ""]}
    assert problems == [
        "auth.jwt.secret: environment variable JWT is not set",
        "paths[1]: environment variable EMPTY is empty",
    ]


def test_structure_and_non_strings_are_untouched() -> None:
    raw: dict[str, Any] = {"a": 1, "b": True, "c": None, "d": [1.5, {"e": "${HOST}"}]}
    assert interpolate(raw, ENV) == {"a": 1, "b": True, "c": None, "d": [1.5, {"e": "cache"}]}


def test_a_value_cannot_inject_structure() -> None:
    env = {"EVIL": "x\nadmin: {port: 1}"}
    assert interpolate({"k": "${EVIL}"}, env) == {"k": "x\nadmin: {port: 1}"}


def test_keys_are_not_interpolated() -> None:
    assert interpolate({"${HOST}": "v"}, ENV) == {"${HOST}": "v"}
