"""Loading the configuration: read the YAML file, interpolate ``${VAR}``, validate every
section and every cross-field rule, and report every problem at once with its YAML
path; and the masked view of a loaded config for ``check-config``."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from sidecar.config.checks import cross_field_problems
from sidecar.config.interpolate import interpolate
from sidecar.config.model import Config, ConfigError, mask_url


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the YAML file at ``path``; raise ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<file>: not valid YAML: {exc}"]) from exc
    return parse(raw if raw is not None else {}, os.environ if env is None else env)


def parse(raw: Any, env: Mapping[str, str]) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: must be a mapping of sections"])
    env_problems: list[str] = []
    data = interpolate(raw, env, problems=env_problems)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors(include_url=False))
    problems.extend(cross_field_problems(data))
    # A missing variable is the one mistake at its path; what its empty value breaks is noise.
    unset = {problem.partition(": ")[0] for problem in env_problems}
    problems = env_problems + [p for p in problems if p.partition(": ")[0] not in unset]
    if problems:
        raise ConfigError(sorted(dict.fromkeys(problems)))
    assert config is not None
    return config


def _describe(error: Any) -> str:
    path = ""
    model: Any = Config
    parent: Any = None
    loc = error["loc"]
    for i, part in enumerate(loc):
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if isinstance(part, str):
            if i < len(loc) - 1 and part not in getattr(model, "model_fields", {part: None}):
                continue  # a key of a mapping of sections (auth.scopes.<name>)
            parent, model = model, _section_type(model, part)
    message = error["msg"].replace("Input should be", "must be").replace("String should", "must")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        known = list(getattr(parent, "model_fields", {}))
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
    elif error["type"] == "missing":
        message = "required"
    return f"{path or '<root>'}: {message}"


def _section_type(model: Any, name: str) -> Any:
    """The model class of field ``name`` in ``model`` (through tuples and mappings),
    else None."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    field = model.model_fields.get(name)
    return _model_in(field.annotation if field is not None else None)


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for candidate in getattr(annotation, "__args__", ()):
        found = _model_in(candidate)
        if found is not None:
            return found
    return None


def masked_dump(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets replaced by ``***``."""
    masked: dict[str, Any] = _mask(config.model_dump(mode="python"))
    return masked


def _mask(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _mask(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_mask(v) for v in node]
    if isinstance(node, SecretStr):
        return "***"
    if isinstance(node, str):
        return mask_url(node)
    return node
