"""Registers the pipeline command groups on the `reasonflux` CLI (entry point `reasonflux.commands`)."""

from __future__ import annotations

import importlib

import click

# One module per command group (pipelines/commands/<group>.py); each exposes register(cli).
MODULES: list[str] = [
    "pipelines.commands.embed",
    "pipelines.commands.train",
    "pipelines.commands.dev",
    "pipelines.commands.mine",
    "pipelines.commands.sample",
    "pipelines.commands.evaluate",
    "pipelines.commands.runs",
    "pipelines.commands.llm",
    "pipelines.commands.problems",
    "pipelines.commands.similar",
    "pipelines.commands.rewards",
    "pipelines.commands.pairs",
    "pipelines.commands.export",
    "pipelines.commands.datasets",
    "pipelines.commands.importing",
    "pipelines.commands.loop",
    "pipelines.commands.retriever",
    "pipelines.commands.models",
]


def register(cli: click.Group) -> None:
    for name in MODULES:
        importlib.import_module(name).register(cli)
