"""Renders every command's --help into docs/cli.md, so the docs come from the code.

    python -m kb.cli.help_docs > docs/cli.md

tests/kb/test_cli_docs.py fails when docs/cli.md is stale.
"""

from __future__ import annotations

import click

HEADER = (
    "# Command-line reference\n\n"
    "Generated from the code by `python -m kb.cli.help_docs > docs/cli.md`; "
    "a test fails when this file is stale.\n"
)


def _walk(command: click.Command, path: list[str], parent: click.Context | None = None):
    # A real parent chain, so inherited settings (-h, width) match what users see.
    settings = {"terminal_width": 100, "max_content_width": 100}
    if parent is None:
        settings = {**command.context_settings, **settings}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):  # loads lazy commands; hidden ones (old aliases) stay out
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render(root: click.Group | None = None) -> str:
    if root is None:
        from kb.cli import cli as root
    parts = [HEADER]
    for path, command, ctx in _walk(root, ["reasonflux"]):
        parts.append(f"\n## {' '.join(path)}\n\n```\n{command.get_help(ctx).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
