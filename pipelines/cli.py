"""Registers the pipeline command groups on the `reasonflux` CLI (entry point `reasonflux.commands`)."""

from __future__ import annotations

import importlib

import click

# One module per command group (pipelines/commands/<group>.py); each exposes register(cli), which adds the
# commands named here (tests/kb/test_cli_lazy.py checks the names), so the CLI imports a module only when
# one of its commands is used.
MODULES: dict[str, list[str]] = {
    "pipelines.commands.embed": ["embed"],
    "pipelines.commands.train": ["train", "navigators"],
    "pipelines.commands.mine": ["mine"],
    "pipelines.commands.sample": ["sample"],
    "pipelines.commands.evaluate": ["rollouts", "evaluate"],  # evaluate: its old name, hidden
    "pipelines.commands.runs": ["runs"],
    "pipelines.commands.llm": ["llm"],
    "pipelines.commands.problems": ["problems"],
    "pipelines.commands.similar": ["similar"],
    "pipelines.commands.rewards": ["rewards"],
    "pipelines.commands.pairs": ["pairs"],
    "pipelines.commands.export": ["export"],
    "pipelines.commands.datasets": ["datasets"],
    "pipelines.commands.importing": ["import"],
    "pipelines.commands.loop": ["loop"],
    "pipelines.commands.retriever": ["retriever"],
    "pipelines.commands.models": ["models"],
}


def register(cli: click.Group) -> None:
    register_modules(cli, MODULES)


def register_modules(cli: click.Group, modules: dict[str, list[str]]) -> None:
    """Lazily when the CLI supports it (kb.cli's group), else by importing each module now."""
    for module, names in modules.items():
        if hasattr(cli, "add_lazy"):
            for name in names:
                cli.add_lazy(name, module)
        else:
            importlib.import_module(module).register(cli)
