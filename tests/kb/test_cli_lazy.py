"""The CLI loads command modules lazily, and those modules keep heavy libraries out of import time, so
`reasonflux --help` lists every command without SQLAlchemy, numpy, torch or fastapi (issue 17)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from demo.cli import MODULES as DEMO_MODULES
from kb.cli import BUILTIN
from pipelines.cli import MODULES as PIPELINE_MODULES
from serve.cli import MODULES as SERVE_MODULES

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "alembic",
    "numpy",
    "torch",
    "transformers",
    "fastapi",
    "pyarrow",
    "matplotlib",
    "jsonschema",
    "math_verify",
    "sentence_transformers",
)


def _declared() -> dict[str, set[str]]:
    """module -> the command names the lazy registry says it adds."""
    declared: dict[str, set[str]] = {}
    for name, modules in BUILTIN.items():
        for module in modules:
            declared.setdefault(module, set()).add(name)
    for registry in (PIPELINE_MODULES, SERVE_MODULES, DEMO_MODULES):
        for module, names in registry.items():
            declared.setdefault(module, set()).update(names)
    return declared


# Modules that add a subcommand to another module's group (made first): module -> (group module, group, sub).
EXTENDS = {
    "kb.cli.template_search": ("kb.cli.templates", "templates", "search"),
    "demo.commands": ("pipelines.commands.loop", "loop", "toy-world"),
}


@pytest.mark.parametrize("module", sorted(_declared()))
def test_each_module_adds_exactly_the_commands_declared_for_it(module):
    group = click.Group("root")
    if module in EXTENDS:
        importlib.import_module(EXTENDS[module][0]).register(group)
    before = set(group.commands)
    importlib.import_module(module).register(group)
    added = set(group.commands) - before
    if module in EXTENDS:
        _, extended, sub = EXTENDS[module]
        assert sub in group.commands[extended].commands
        added.add(extended)
    assert added == _declared()[module]


def test_loop_toy_world_is_listed_under_loop(cli):
    assert "toy-world" in cli("loop", "--help").stdout


HIDDEN = {"evaluate"}  # old names kept for a release (deprecated_alias)


def test_help_lists_every_command_but_old_names():
    result = CliRunner().invoke(importlib.import_module("kb.cli").cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {name for names in _declared().values() for name in names} - HIDDEN
    assert "rollouts" in listed


def test_evaluate_is_a_deprecated_alias_of_rollouts(cli):
    new = cli("rollouts", "--inference", "nosuchbackend:x", expect=None)
    old = cli("evaluate", "--inference", "nosuchbackend:x", expect=None)
    assert new.exit_code == old.exit_code != 0
    assert "deprecated" not in new.stderr and "now `reasonflux rollouts`" not in new.stderr
    assert old.stderr.startswith("note: `reasonflux evaluate` is now `reasonflux rollouts`")
    assert old.stderr.splitlines()[1:] == new.stderr.splitlines()
    assert "Deprecated: use `reasonflux rollouts`" in cli("evaluate", "--help").stdout


def test_loading_every_command_imports_no_heavy_library():
    code = (
        "import json, sys, kb.cli; kb.cli.cli.load_all(); "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
