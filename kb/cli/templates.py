"""`reasonflux templates`: add, edit, revert, show, list, history, blame, diff, deprecate, restore.

Every write goes through kb.templates (versioned, optimistic locking); this module
only turns files and flags into dicts and records into output. A command that writes
versions embeds them in the same transaction for every embedding model the KB holds
vectors for (kb.template_vectors), unless --no-embed. `search` is added to
`templates_group` by the retrieval module.

The commands live in kb.cli.template_edit (writes) and kb.cli.template_view (reads), the file and
flag handling in kb.cli.template_input; this module makes the group.
"""

from __future__ import annotations

import click

from kb.cli.template_edit import add, deprecate, edit, restore, revert
from kb.cli.template_view import blame_command, diff, history_command, list_command, show


@click.group("templates")
def templates_group() -> None:
    """Versioned thought templates: add, edit, inspect, deprecate."""


for _command in (
    add,
    edit,
    revert,
    show,
    list_command,
    history_command,
    blame_command,
    diff,
    deprecate,
    restore,
):
    templates_group.add_command(_command)


def register(cli: click.Group) -> None:
    cli.add_command(templates_group)
