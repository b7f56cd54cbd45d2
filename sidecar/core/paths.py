"""Path normalisation and prefix matching. Every routing, auth and rate-limit
decision is made on the normalised path, never on the raw string or the query."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

# Percent-escapes that could smuggle a separator or a dot segment past a matcher.
_SUSPICIOUS_ESCAPES = (b"%2f", b"%5c", b"%2e", b"%00")


# A percent-escape of a percent-escape of a dot, slash or backslash (%252e, %252f, %255c):
# one more decoding by the upstream turns it into a separator or a dot segment.
_DOUBLE_ENCODED = re.compile(rb"%25(?:2e|2f|5c)", re.IGNORECASE)
# A dot segment with path parameters (``..;x``): Tomcat/Spring strip ``;...`` and then
# resolve the dots, so ``/public/..;/private`` reaches /private there.
_DOT_PARAMETER = re.compile(r"(?:^|[/\\])\.{1,2};")


def ambiguous(raw_path: bytes, decoded: str) -> bool:
    """Whether an upstream might resolve this path differently from ``normalise()``:
    dot segments with parameters, double-encoded dots or separators, percent-escapes
    that are not valid UTF-8 (overlong encodings included), or characters that Unicode
    compatibility normalisation (NFKC, applied by some servers) turns into a dot
    segment or a separator (fullwidth dots U+FF0E, fullwidth solidus U+FF0F)."""
    if b"%" not in raw_path and b";" not in raw_path and decoded.isascii():
        return False  # the common case, one scan each
    if _DOUBLE_ENCODED.search(raw_path) or _DOT_PARAMETER.search(decoded):
        return True
    if b"%" in raw_path:
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            return True
    if not decoded.isascii():
        folded = unicodedata.normalize("NFKC", decoded)
        if folded != decoded and _changes_structure(decoded, folded):
            return True
    return False


def _changes_structure(decoded: str, folded: str) -> bool:
    if any(folded.count(c) != decoded.count(c) for c in "/\\;"):
        return True
    return any(s in (".", "..") for s in folded.replace("\\", "/").split("/")) and not any(
        s in (".", "..") for s in decoded.replace("\\", "/").split("/")
    )


def decided_path(raw_path: bytes, path: str, *, refuse_ambiguous: bool) -> tuple[str, bool]:
    """The normalised path every decision is made on, and whether the request is
    refused as ambiguous (``server.reject_ambiguous_paths``). The one reading of a path
    for the public listener and the forward-auth listener alike: ``raw_path`` and
    ``path`` as ``parse_target`` (proxy/target.py) gives them."""
    return normalise(path), refuse_ambiguous and ambiguous(raw_path, path)


def normalise(path: str) -> str:
    """Resolve ``.``/``..``, collapse ``//``, turn ``\\`` into ``/``; keep a trailing slash.

    ``path`` is the already percent-decoded ASGI ``scope["path"]``.
    """
    segments: list[str] = []
    parts = path.replace("\\", "/").split("/")
    for segment in parts:
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    trailing = path.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def upstream_path(raw_path: bytes, decoded: str, normalised: str) -> bytes:
    """What to send upstream: the client's bytes when they already mean ``normalised``,
    otherwise ``normalised`` re-encoded, so the upstream sees what auth decided on."""
    if decoded == normalised and (
        b"%" not in raw_path or not any(e in raw_path.lower() for e in _SUSPICIOUS_ESCAPES)
    ):
        return raw_path
    return quote(normalised, safe="/:@!$&'()*+,;=-._~").encode("ascii")


def matched_form(prefix: str) -> str:
    """A configured prefix as PrefixMatcher compares it: normalised, lower case, without
    a trailing slash. ``""`` covers every path (``/``, ``//``, ``/x/..`` all become it);
    config validation checks this form, not the string as written."""
    return normalise(prefix).lower().rstrip("/")


class PrefixMatcher:
    """Case-insensitive, segment-aware prefix match: ``/api/v1/auth/`` matches
    ``/api/v1/auth/login`` and ``/API/v1/auth``, never ``/api/v1/authority``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = tuple(matched_form(p) for p in prefixes)

    def matches(self, normalised: str) -> bool:
        return self.match(normalised) is not None

    def match(self, normalised: str) -> int | None:
        """Index of the first prefix that matches, or None."""
        lowered = normalised.lower()
        for index, prefix in enumerate(self._prefixes):
            if prefix == "" or lowered == prefix or lowered.startswith(prefix + "/"):
                return index
        return None
