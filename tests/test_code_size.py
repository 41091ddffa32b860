"""A newcomer reads a product module in one sitting: no file over FILE_LINES, no function over FUNCTION_LINES.

Measured on the product packages only (tests and benchmarks are read differently). A file or function that
must grow past the limit is split by concept (docs/architecture.md, "Packages and their dependencies").
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kb", "pipelines", "serve", "demo", "migrations")
FILE_LINES = 500
FUNCTION_LINES = 80


def _product_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    # Landed migrations are history, pinned byte for byte (migrations/landed.py): never split.
    return [p for p in files if "versions" not in p.relative_to(ROOT).parts]


def _oversized(files: list[Path]) -> tuple[list[str], list[str]]:
    long_files, long_functions = [], []
    for path in files:
        source = path.read_text()
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if (lines := source.count("\n")) > FILE_LINES:
            long_files.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LINES:
                    long_functions.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return long_files, long_functions


def test_product_files_and_functions_stay_readable():
    files = _product_files()
    assert len(files) > 50  # the walk found the packages (a wrong ROOT would pass vacuously)
    long_files, long_functions = _oversized(files)
    assert not long_files, f"files over {FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {FUNCTION_LINES} lines: {long_functions}"


def test_the_measure_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n" + "\n" * FILE_LINES)
    long_files, long_functions = _oversized([tmp_path / "m.py"])
    assert long_functions and "f()" in long_functions[0]
    assert long_files
