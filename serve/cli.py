"""Registers the solver and service commands on the `reasonflux` CLI (entry point `reasonflux.commands`)."""

from __future__ import annotations

import importlib

import click

MODULES: list[str] = [
    "serve.commands.solve",
    "serve.commands.sessions",
    "serve.commands.serve",
    "serve.commands.eval",
    "serve.commands.demo",
]


def register(cli: click.Group) -> None:
    for name in MODULES:
        importlib.import_module(name).register(cli)
