"""Registers the demo's commands on the `reasonflux` CLI (entry point `reasonflux.commands`): `demo`, `dev`,
and `loop toy-world` (a subcommand of pipelines' `loop` group, which demo.commands extends)."""

from __future__ import annotations

import click

from pipelines.cli import register_modules

# demo.commands' register(cli) adds the commands named here (see pipelines/cli.py); `loop` is listed so the
# lazy CLI imports demo.commands (after pipelines.commands.loop) when `reasonflux loop ...` runs.
MODULES: dict[str, list[str]] = {
    "demo.commands": ["demo", "dev", "loop"],
}


def register(cli: click.Group) -> None:
    register_modules(cli, MODULES)
