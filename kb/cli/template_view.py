"""`reasonflux templates` commands that read: show, list, history, blame, diff."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options, terminal_safe, to_jsonable
from kb.template_fields import STATUSES

LIST_COLUMNS = ["id", "category", "section", "name", "status", "version", "template_type"]  # key: id suffices


@click.command("show")
@click.argument("ref")
@click.option("--version", "version_no", type=int, default=None, help="Show version N (default: current).")
@output_options(csv_ok=False)
@pass_app
def show(app: AppContext, ref: str, version_no: int | None, fmt: str) -> None:
    """Show template REF (id or key) at its current version or at --version N."""
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        version = T.get_version(session, ref, version_no)
        record = T.version_dict(T.resolve(session, version.template_id), version)
    if fmt == "table":
        _print_full(list(record.items()), ["field", "value"], title=record["key"])
    else:
        emit(record, fmt)


@click.command("list")
@click.option("--tag", "tags", multiple=True, help="Only templates with this tag (repeat: all of them).")
@click.option("--category", help="Only this category (case-insensitive).")
@click.option("--section", help="Only this section (case-insensitive).")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status (default: any).")
@click.option("--text", help="Substring of name or description, or full-text match.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@output_options
@pass_app
def list_command(
    app: AppContext,
    tags: tuple[str, ...],
    category: str | None,
    section: str | None,
    status: str | None,
    text: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """List templates at their current version."""
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        rows = T.list_templates(
            session, tags=tags, category=category, section=section, status=status, text=text, limit=limit
        )
        records = [
            {
                "id": t.id,
                "key": t.key,
                "category": t.category,
                "section": t.section,
                "name": v.name,
                "status": t.status,
                "version": t.current_version_no,
                "template_type": v.template_type,
                "tags": v.tags,
                "description": v.description,
                "updated_at": t.updated_at,
            }
            for t, v in rows
        ]
    emit(records, fmt, columns=LIST_COLUMNS if fmt == "table" else None, title="templates")


@click.command("history")
@click.argument("ref")
@output_options
@pass_app
def history_command(app: AppContext, ref: str, fmt: str) -> None:
    """Every version of template REF, oldest first."""
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        template = T.resolve(session, ref)
        records = [
            {
                "version": v.version_no,
                "current": v.version_no == template.current_version_no,
                "created_at": v.created_at,
                "source_kind": v.source_kind,
                "source_ref": v.source_ref,
                "change_note": v.change_note,
                "author": v.author,
                "run_id": v.run_id,
                "provenance": v.provenance,
                "version_id": v.id,
                "parent_version_id": v.parent_version_id,
                "content_hash": v.content_hash,
            }
            for v in T.history(session, template.id)
        ]
    emit(
        records,
        fmt,
        title=template.key,
        columns=None
        if fmt != "table"
        else [
            "version",
            "current",
            "created_at",
            "author",
            "source_kind",
            "source_ref",
            "change_note",
            "run_id",
        ],
    )


@click.command("blame")
@click.argument("ref")
@output_options
@pass_app
def blame_command(app: AppContext, ref: str, fmt: str) -> None:
    """Per field of template REF: the version that last changed it, and who made that version."""
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        template = T.resolve(session, ref)
        records = T.blame(T.history(session, template.id))
    emit(
        records,
        fmt,
        title=template.key,
        columns=None
        if fmt != "table"
        else ["field", "version", "author", "run_id", "created_at", "change_note"],
    )


@click.command("diff")
@click.argument("ref")
@click.argument("a", type=int)
@click.argument("b", type=int, required=False)
@output_options(csv_ok=False)
@pass_app
def diff(app: AppContext, ref: str, a: int, b: int | None, fmt: str) -> None:
    """Field-by-field differences of template REF from version A to version B (default: current)."""
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        old, new = T.get_version(session, ref, a), T.get_version(session, ref, b)
        key = T.resolve(session, ref).key
        changes = T.diff_versions(old, new)
    if fmt == "table":
        if not changes:
            click.echo(
                terminal_safe(f"{key}: versions {old.version_no} and {new.version_no} have the same content")
            )
            return
        rows = [(c["field"], _readable(c["old"]), _readable(c["new"])) for c in changes]
        _print_full(rows, ["field", f"v{old.version_no}", f"v{new.version_no}"], title=key)
    else:
        emit(
            changes
            if fmt == "jsonl"
            else {"key": key, "from": old.version_no, "to": new.version_no, "changes": changes},
            fmt,
        )


def _readable(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(f"- {v}" for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(to_jsonable(value), ensure_ascii=False, indent=1)
    return str(to_jsonable(value))


def _print_full(rows: list[tuple], columns: list[str], title: str | None = None) -> None:
    """A table for people that shows long text in full (kb.output's cells are cut for list views)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(terminal_safe(title)) if title else None, header_style="bold", show_lines=True)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        # Text: no rich markup in template content; terminal_safe: no control sequences either
        table.add_row(*[Text(terminal_safe(_readable(v))) for v in row])
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(table)
