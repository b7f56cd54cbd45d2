"""Path normalisation and prefix matching. Every routing, auth and rate-limit
decision is made on the normalised path, never on the raw string or the query."""

from __future__ import annotations

from urllib.parse import quote

# Percent-escapes that could smuggle a separator or a dot segment past a matcher.
_SUSPICIOUS_ESCAPES = (b"%2f", b"%5c", b"%2e", b"%00")


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
