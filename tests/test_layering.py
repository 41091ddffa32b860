"""The product does not depend on the demo or the tests: no module under kb/, pipelines/, serve/ or migrations/
imports `demo` or `tests` (top-level or inside a function, or by name through importlib), and the package
direction kb <- pipelines <- serve holds. Static: every module's imports are read with ast, nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("kb", "pipelines", "serve", "migrations")
# package -> the project packages it must not import (demo and tests for all; the layering for kb, pipelines).
FORBIDDEN = {
    "kb": {"demo", "tests", "pipelines", "serve"},
    "pipelines": {"demo", "tests", "serve"},
    "serve": {"demo", "tests"},
    "migrations": {"demo", "tests", "pipelines", "serve"},
}


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module name) of every absolute import anywhere in TREE, and of importlib.import_module
    and __import__ calls with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and _call_name(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in imported_names(tree):
            if name.split(".")[0] in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


@pytest.mark.parametrize("package", PRODUCT)
def test_product_imports_neither_demo_nor_tests_and_layers_hold(package):
    assert (ROOT / package).is_dir()
    assert violations(package) == []


def test_the_check_sees_function_local_and_importlib_imports():
    tree = ast.parse(
        "import os\n"
        "def f():\n"
        "    from demo.toy_world import setup\n"
        "    import tests.support.real_model\n"
        "    return importlib.import_module('demo.play_along')\n"
        "from . import sibling\n"
    )
    assert [name for _, name in imported_names(tree)] == [
        "os",
        "demo.toy_world",
        "tests.support.real_model",
        "demo.play_along",
    ]
