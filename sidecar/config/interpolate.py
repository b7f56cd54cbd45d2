"""``${VAR}`` and ``${VAR:-default}`` interpolation of YAML string values from the environment.

Applied to parsed scalars (not to the raw text), so a value can never change the
structure of the document. As in docker compose, ``${VAR:-default}`` also uses the
default when VAR is set but empty, and ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    node: Any, env: Mapping[str, str], path: str = "", problems: list[str] | None = None
) -> Any:
    """Return ``node`` with references replaced; unset variables are appended to ``problems``."""
    if problems is None:
        problems = []
    if isinstance(node, dict):
        return {
            key: interpolate(value, env, _join(path, str(key)), problems)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [interpolate(item, env, f"{path}[{i}]", problems) for i, item in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        return _REFERENCE.sub(lambda m: _resolve(m, env, path, problems), node)
    return node


def _resolve(match: re.Match[str], env: Mapping[str, str], path: str, problems: list[str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name, default = match.group(1), match.group(2)
    value = env.get(name)
    if value:
        return value
    if default is not None:
        return default
    state = "is not set" if value is None else "is empty"
    problems.append(f"{path or '<root>'}: environment variable {name} {state}")
    return ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
