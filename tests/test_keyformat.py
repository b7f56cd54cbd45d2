"""SPEC.md "API key format": pure functions, plain and property-based tests."""

from __future__ import annotations

import hashlib
import hmac
import string
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.keys import format as keyformat
from sidecar.keys.hashing import KeyHasher

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
randoms = st.text(alphabet=BASE62, min_size=42, max_size=42)


def key_from(random42: str) -> str:
    body = "sk_live_" + random42
    return body + keyformat.checksum(body)


def test_alphabet_is_digits_upper_lower_in_that_order() -> None:
    assert keyformat.ALPHABET == BASE62


@pytest.mark.parametrize(
    ("number", "expected"),
    [(0, "000000"), (61, "00000z"), (62, "000010"), (2**32 - 1, "4gfFC3")],
)
def test_base62_is_most_significant_first_and_zero_padded(number: int, expected: str) -> None:
    assert keyformat.base62(number, 6) == expected


def test_checksum_is_base62_crc32_of_everything_before_it() -> None:
    body = "sk_live_" + "a" * 42
    expected = keyformat.base62(zlib.crc32(body.encode("ascii")), 6)
    assert keyformat.checksum(body) == expected


def test_generated_keys_have_the_documented_shape() -> None:
    for _ in range(200):
        key = keyformat.generate()
        assert len(key) == 56
        assert key.startswith("sk_live_")
        assert set(key[8:]) <= set(BASE62)
        assert key[-6:] == keyformat.checksum(key[:-6])
        parsed = keyformat.parse(key)
        assert parsed is not None and parsed.prefix == key[:14]


def test_generated_keys_are_not_repeated() -> None:
    assert len({keyformat.generate() for _ in range(5000)}) == 5000


@given(randoms)
def test_every_well_formed_key_parses(random42: str) -> None:
    key = key_from(random42)
    parsed = keyformat.parse(key)
    assert parsed is not None
    assert parsed.key == key
    assert parsed.prefix == key[:14]


@given(randoms, st.integers(min_value=8, max_value=55), st.sampled_from(BASE62))
def test_any_single_character_change_is_rejected(random42: str, index: int, char: str) -> None:
    key = key_from(random42)
    mutated = key[:index] + char + key[index + 1 :]
    if mutated != key:
        assert keyformat.parse(mutated) is None


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_and_rarely_parses(value: str) -> None:
    parsed = keyformat.parse(value)
    if parsed is not None:
        assert value[-6:] == keyformat.checksum(value[:-6])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sk_live_",
        "sk_test_" + "a" * 48,  # the test environment is reserved, not implemented
        "sk_live_" + "a" * 47,
        "sk_live_" + "a" * 49,
        "sk_live_" + "a" * 41 + "é" + "a" * 6,
        "sk_live_" + "a" * 41 + "-" + "a" * 6,
        " sk_live_" + "a" * 48,
        "sk_live_" + "a" * 10_000,
        "SK_LIVE_" + "a" * 48,
    ],
)
def test_malformed_values_are_rejected(value: str) -> None:
    assert keyformat.parse(value) is None


def test_a_start_forces_the_prefix() -> None:
    key = keyformat.generate("ABCDEF")
    assert key[:14] == "sk_live_ABCDEF"
    assert keyformat.parse(key) is not None


def test_parsed_key_repr_hides_the_key() -> None:
    key = keyformat.generate()
    assert key not in repr(keyformat.parse(key))


def test_keyed_hash_depends_on_the_secret() -> None:
    key = keyformat.generate()
    one, two = KeyHasher(b"s" * 32), KeyHasher(b"t" * 32)
    assert one.hash(key) != two.hash(key)
    assert one.hash(key) == one.hash(key)
    assert len(one.hash(key)) == 64 and key not in one.hash(key)
    assert "s" * 32 not in repr(one)


def test_keyed_hash_is_hmac_sha256_of_the_key_call_after_call() -> None:
    """Stored hashes must not change between versions; and a hash must not carry state
    from the one before (the hasher copies one keyed HMAC per call)."""
    secret = b"k" * 32
    hasher = KeyHasher(secret)
    for key in (keyformat.generate(), keyformat.generate(), "sk_live_x"):
        expected = hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()
        assert hasher.hash(key) == expected


def test_short_hash_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyHasher(b"short")
