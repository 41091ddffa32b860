"""Registers the solver and service commands on the `reasonflux` CLI (entry point `reasonflux.commands`)."""

from __future__ import annotations

import click

from pipelines.cli import register_modules

# Each module's register(cli) adds the commands named here (see pipelines/cli.py).
MODULES: dict[str, list[str]] = {
    "serve.commands.solve": ["solve"],
    "serve.commands.sessions": ["sessions"],
    "serve.commands.serve": ["serve"],
    "serve.commands.eval": ["eval"],
}


def register(cli: click.Group) -> None:
    register_modules(cli, MODULES)
