"""The layer contracts (pyproject.toml, run by `lint-imports` in .ci/run) name every
subpackage and every module inside one: one they do not name would go unchecked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sidecar"


def _contracts() -> list[dict[str, Any]]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [c for c in settings["contracts"] if c["type"] == "layers"]


def _placed(contract: dict[str, Any]) -> list[str]:
    return [name for layer in contract["layers"] for name in re.split(r"[\s:|]+", layer) if name]


def test_every_subpackage_and_top_module_is_in_exactly_one_layer() -> None:
    top = next(c for c in _contracts() if "containers" not in c)
    modules = [f"sidecar.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    packages = [f"sidecar.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")]
    assert sorted(_placed(top)) == sorted(modules + packages)


def test_every_module_of_a_subpackage_is_in_its_own_contract_once() -> None:
    inner = {c["containers"][0]: c for c in _contracts() if "containers" in c}
    for init in PACKAGE.glob("*/__init__.py"):
        package = f"sidecar.{init.parent.name}"
        modules = sorted(p.stem for p in init.parent.glob("*.py") if p.stem != "__init__")
        assert package in inner, f"{package} has no layers contract"
        assert sorted(_placed(inner[package])) == modules, package


def test_every_subpackage_says_what_it_is_and_what_it_exports() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        text = init.read_text()
        assert text.startswith('"""'), f"{init} has no docstring"
        modules = sorted(p.stem for p in init.parent.glob("*.py") if p.stem != "__init__")
        exported = re.search(r"__all__ = \[(.*?)\]", text, re.S)
        assert exported, f"{init} has no __all__"
        assert sorted(re.findall(r'"(\w+)"', exported.group(1))) == modules, init
