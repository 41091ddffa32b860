"""Every third-party package the product imports is declared in pyproject.toml (core or an extra), so that
the README's install commands give a working install rather than one that works only where something else
happened to bring the package in."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kb", "pipelines", "serve", "demo", "migrations")
# Imported directly but part of a declared package's own API, pinned by it: declaring them beside it could
# only conflict with its pins.
PART_OF = {"starlette": "fastapi", "anyio": "fastapi", "pydantic": "fastapi"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(specs: list[str]) -> set[str]:
    """Distribution names of requirement specs, normalised ("Foo_Bar>=1" -> "foo-bar")."""
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in specs}


def _declared() -> set[str]:
    project = _project()
    return _names(
        project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    )


def _imported() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], path.relative_to(ROOT))
    own = set(PACKAGES) | {"__future__"}
    return {m: p for m, p in found.items() if m not in sys.stdlib_module_names and m not in own}


def test_every_imported_package_is_declared():
    declared = _declared()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_imported().items()):
        if module in PART_OF:
            assert PART_OF[module] in declared, (module, PART_OF[module])
            continue
        # A package of an extra that is not installed here (vllm, deepspeed) is known by its module's name.
        dists = distributions.get(module) or [module]
        if not any(d.lower().replace("_", "-") in declared for d in dists):
            missing.append(f"{module} ({', '.join(dists)}), imported by {path}")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_the_gguf_reader_that_conversion_needs_is_a_core_dependency():
    # transformers reads a GGUF only with the `gguf` package, which nothing else pulls in and nothing imports
    # by name: without it in the core dependencies, `models get` (and the demo's real-model stage) fails on a
    # fresh install.
    assert "gguf" in _names(_project()["dependencies"])
