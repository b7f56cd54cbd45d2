"""The layer contract (pyproject.toml, run by `lint-imports` in .ci/run) names every module:
one it does not name would go unchecked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_is_in_exactly_one_layer() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in settings["contracts"] if c["type"] == "layers")["layers"]
    placed = [name for layer in layers for name in re.split(r"[\s:|]+", layer) if name]
    modules = sorted(f"sidecar.{p.stem}" for p in (ROOT / "sidecar").glob("*.py"))
    modules.remove("sidecar.__init__")
    assert sorted(placed) == modules
