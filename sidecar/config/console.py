"""The rules for the ``console`` section (the API Keys page) that span fields: where the
page lives, and that its sign-in URLs can work. Pure: reads the raw, interpolated YAML."""

from __future__ import annotations

from typing import Any

from sidecar.core.domain import KEYS_API_PATH
from sidecar.core.paths import PrefixMatcher, matched_form, normalise


def _within(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or under it, as the dispatcher matches them."""
    return PrefixMatcher((prefix,)).matches(normalise(path))


def console_problems(section: Any, public_paths: Any) -> list[str]:
    """Every problem of ``console`` by YAML path; tolerant of values pydantic rejects."""
    if not isinstance(section, dict):
        return []
    problems: list[str] = []
    path = section.get("path", "/console/")
    if isinstance(path, str) and path.startswith("/"):
        if normalise(path) != path or not path.endswith("/"):
            problems.append(f"console.path: must be a normalised path ending in /: {path}")
        elif matched_form(path) == "":
            problems.append("console.path: / would put the page in front of every path")
        elif _within(path, KEYS_API_PATH) or _within(KEYS_API_PATH, path):
            problems.append(f"console.path: must not overlap {KEYS_API_PATH}")
    if section.get("enabled") is not True:
        return problems
    listed = public_paths if isinstance(public_paths, list) else []
    public = [prefix for prefix in listed if isinstance(prefix, str)]
    for name in ("login_url", "refresh_url"):
        url = section.get(name, f"/api/v1/auth/{name.partition('_')[0]}")
        if not isinstance(url, str) or not url.startswith("/"):
            continue
        if isinstance(path, str) and path.startswith("/") and _within(url, path):
            problems.append(f"console.{name}: must not be under console.path")
        elif not any(_within(url, prefix) for prefix in public):
            problems.append(
                f"console.{name}: {url} is not under auth.public_paths: the page signs in "
                "without a credential, so the sidecar would refuse it"
            )
    return problems
