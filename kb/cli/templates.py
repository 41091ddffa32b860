"""`reasonflux templates`: add, edit, revert, show, list, history, blame, diff, deprecate, restore.

Every write goes through kb.templates (versioned, optimistic locking); this module
only turns files and flags into dicts and records into output. A command that writes
versions embeds them in the same transaction for every embedding model the KB holds
vectors for (kb.template_vectors), unless --no-embed. `search` is added to
`templates_group` by the retrieval module.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from kb import storable
from kb.cli.context import AppContext, pass_app
from kb.errors import InputError
from kb.output import emit, output_options, terminal_safe, to_jsonable
from kb.template_fields import STATUSES

# Fields of a `templates show --json` record that describe the version, not its content:
# accepted in an edit file (so show -> edit -> save -> edit --file works) and ignored.
READ_ONLY_FIELDS = (
    "id",
    "status",
    "current_version",
    "version_id",
    "content_hash",
    "parent_version_id",
    "source_kind",
    "source_ref",
    "provenance",
    "change_note",
    "author",
    "run_id",
    "created_at",
)
LIST_COLUMNS = ["id", "category", "section", "name", "status", "version", "template_type"]  # key: id suffices


@click.group("templates")
def templates_group() -> None:
    """Versioned thought templates: add, edit, inspect, deprecate."""


def _content_options(f):
    """Flags for a template's fields; each one given overrides the file's value."""
    options = [
        click.option("--name", help="Template name."),
        click.option("--category", help="Top-level category (with section and name: the key)."),
        click.option("--section", help="Section within the category."),
        click.option("--type", "template_type", help="Template type, e.g. 'Problem-Solving Method'."),
        click.option("--tag", "tags", multiple=True, help="A tag (repeat for several; replaces the list)."),
        click.option("--description", help="What the template does."),
        click.option("--scope", "application_scope", help="When it applies."),
        click.option("--step", "steps", multiple=True, help="A step (repeat, in order; replaces the list)."),
        click.option("--example-problem", help="Worked example: the problem."),
        click.option("--example-solution", help="Worked example: the solution."),
        click.option("--example-answer", help="Worked example: the answer."),
        click.option(
            "--file",
            "file",
            type=click.Path(dir_okay=False, allow_dash=True),
            help="JSON or YAML file with the fields ('-': stdin).",
        ),
        click.option("--note", help="Change note recorded with the version."),
    ]
    return _write_options(_apply(options, f))


def _apply(options, f):
    for option in reversed(options):
        f = option(f)
    return f


def _write_options(f):
    """What every command that writes versions takes: who made it, and whether to embed it now."""
    return _apply(
        [
            click.option("--author", default=None, help="Who made the version (default: the OS user)."),
            click.option(
                "--no-embed",
                is_flag=True,
                help="Do not embed the new versions now (bulk work; run `reasonflux embed` later).",
            ),
        ],
        f,
    )


def _embed_or_warn(session, version_ids: list[int], no_embed: bool) -> list[str]:
    """Embed new versions inside the command's transaction; the models done. With --no-embed, say
    on stderr which models now lack vectors and how to fix it."""
    from kb import template_vectors as V

    conn = session.connection()
    if no_embed:
        for line in V.missing_vectors_advice(V.missing_vectors(conn)):
            click.echo(f"warning: {line}", err=True)
        return []
    return sorted(V.embed_versions(conn, version_ids))


FLAG_FIELDS = (
    "name",
    "category",
    "section",
    "template_type",
    "tags",
    "description",
    "application_scope",
    "steps",
    "example_problem",
    "example_solution",
    "example_answer",
)


def _flag_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name in FLAG_FIELDS:
        value = kwargs.get(name)
        if value is None or value == ():
            continue
        values[name] = list(value) if isinstance(value, tuple) else value
    return values


def load_file(path: str) -> Any:
    """A JSON or YAML document; malformed input is an InputError naming the file and position."""
    import yaml

    name = "<stdin>" if path == "-" else path
    try:
        text = (
            click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text(encoding="utf-8")
        )
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=name) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=name) from None
    if not text.strip():
        raise InputError("the file is empty", file=name)
    if Path(path).suffix.lower() == ".json":
        try:
            return storable.parse_json(text)
        except json.JSONDecodeError as e:
            raise InputError(
                f"malformed JSON: {e.msg}", file=name, record=f"line {e.lineno} column {e.colno}"
            ) from None
        except RecursionError:
            raise storable.too_deep(file=name) from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise InputError(f"malformed JSON: {e}", file=name) from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise storable.too_deep(file=name) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        record = f"line {mark.line + 1} column {mark.column + 1}" if mark else None
        raise InputError(
            f"malformed JSON/YAML: {getattr(e, 'problem', None) or e}", file=name, record=record
        ) from None


def _file_records(path: str | None) -> list[tuple[dict[str, Any], str | None]]:
    """[(record, where)] from a file holding one object or a list of them."""
    if path is None:
        return [({}, None)]
    name = "<stdin>" if path == "-" else path
    data = load_file(path)
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(
                "must be an object with the template's fields",
                file=name,
                record=f"[{i}]" if isinstance(data, list) else None,
            )
    return [(item, f"[{i}]" if isinstance(data, list) else None) for i, item in enumerate(items)]


def _result(template, version, changed: bool) -> dict[str, Any]:
    return {
        "id": template.id,
        "key": template.key,
        "version": version.version_no,
        "changed": changed,
        "version_id": version.id,
        "content_hash": version.content_hash,
    }


@templates_group.command("add")
@_content_options
@output_options(csv_ok=False)
@pass_app
def add(
    app: AppContext,
    file: str | None,
    note: str | None,
    author: str | None,
    no_embed: bool,
    fmt: str,
    **flags: Any,
) -> None:
    """Add new templates from --file (one object or a list) or from flags.

    \b
    reasonflux templates add --category Algebra --section Polynomials --name "Vieta's formulas" \\
        --tag roots --description "Relate roots to coefficients." --step "Write the polynomial" --step "Read off sums"
    reasonflux templates add --file new_templates.yaml
    """
    from kb import templates as T
    from kb.db import session_scope

    name = "<stdin>" if file == "-" else file
    overrides = _flag_values(flags)
    specs = [
        T.TemplateSpec.from_dict({**record, **overrides}, file=name, record=where)
        for record, where in _file_records(file)
    ]
    results = []
    with session_scope(app.db()) as session:
        for spec in specs:
            version = T.create_template(
                session, spec, source_kind="user", source_ref=name, change_note=note, author=author
            )
            record = _result(T.resolve(session, version.template_id), version, True)
            results.append({k: v for k, v in record.items() if k != "changed"})
        embedded = _embed_or_warn(session, [r["version_id"] for r in results], no_embed)
    emit([{**r, "embedded": embedded} for r in results], fmt)


@templates_group.command("edit")
@click.argument("ref")
@_content_options
@click.option(
    "--expect-version",
    type=int,
    default=None,
    help="Fail (exit 3, nothing written) unless the template is still at this version.",
)
@output_options(csv_ok=False)
@pass_app
def edit(
    app: AppContext,
    ref: str,
    file: str | None,
    note: str | None,
    expect_version: int | None,
    author: str | None,
    no_embed: bool,
    fmt: str,
    **flags: Any,
) -> None:
    """Write a new version of template REF (id or key) with the given fields changed.

    Only the fields given (in --file or as flags) change. Nothing changed: no new
    version, exit 0. A `templates show --json` record is a valid --file; its
    `version` is then the expected version unless --expect-version is given.

    With neither --file nor field flags, the template opens in $VISUAL or $EDITOR as YAML (as `git
    commit` does); saving writes the new version. Content that does not validate re-opens the editor
    with the error at the top; closing it unchanged, or emptying it, writes nothing.

    \b
    reasonflux templates edit "Algebra/Polynomials/Vieta's formulas" --description "..." --note "clarify"
    reasonflux templates edit 12 --file t12.json --expect-version 3
    EDITOR=nano reasonflux templates edit 12
    """
    from kb import templates as T
    from kb.db import session_scope

    name = "<stdin>" if file == "-" else file
    records = _file_records(file)
    if len(records) != 1:
        raise InputError("edit takes one template; the file holds a list", file=name)
    record, _ = records[0]
    values = {**record, **_flag_values(flags)}
    if file is None and not values:
        if not (os.environ.get("VISUAL") or os.environ.get("EDITOR") or sys.stdin.isatty()):
            raise InputError(
                "nothing to change: give field flags or --file, or set EDITOR to edit the template "
                "in an editor",
                field="REF",
            )
        name = EDITOR_FILE
        values = _edit_in_editor(app, ref)
        if values is None:
            click.echo(
                "no changes: the editor was closed without changes (or emptied); nothing written", err=True
            )
            return
    with session_scope(app.db()) as session:
        template = T.resolve(session, ref)
        changes, file_version = _edit_changes(template, values, name)
        version, changed = T.edit_template(
            session,
            template.id,
            changes,
            expect_version=expect_version if expect_version is not None else file_version,
            source_kind="user",
            source_ref=name,
            change_note=note,
            author=author,
        )
        embedded = _embed_or_warn(session, [version.id], no_embed) if changed else []
        result = {**_result(template, version, changed), "embedded": embedded}
    if not changed and fmt == "table":
        click.echo(terminal_safe(f"no changes: {result['key']} stays at version {result['version']}"))
        return
    emit(result, fmt)


EDITOR_FILE = "<editor>"
EDITOR_HEADER = (
    "# Editing template {key} (version {version}). Save and close to write a new version.\n"
    "# Close without saving, or empty the file, to write nothing. Lines starting with # are ignored.\n"
    "# `version` is the version you started from: if someone writes another first, nothing is written (exit 3).\n"
)


def _edit_in_editor(app: AppContext, ref: str) -> dict[str, Any] | None:
    """The template's content edited in $VISUAL/$EDITOR as YAML, validated: re-opened with the error until
    it validates; None when the user leaves it unchanged or empty."""
    import yaml

    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:  # read, then let go: no transaction stays open while editing
        template = T.resolve(session, ref)
        record = T.version_dict(template, T.get_version(session, template.id, template.current_version_no))
    header = EDITOR_HEADER.format(key=template.key, version=record["version"])
    shown = {"version": record["version"], **{f: record[f] for f in T.CONTENT_FIELDS}}
    original = text = header + _yaml_dump(shown)
    while True:
        edited = click.edit(text, extension=".yaml")
        if edited is None or edited == text or not _uncommented(edited).strip():
            return None
        try:
            values = yaml.safe_load(_uncommented(edited))
            if not isinstance(values, dict):
                raise InputError("must be a mapping of the template's fields", file=EDITOR_FILE)
            _edit_changes(template, values, EDITOR_FILE)
        except (InputError, yaml.YAMLError) as e:
            error = str(e).replace("\n", " ")
            text = (
                f"# ERROR: {error}\n# Fix it and save, or empty the file to give up.\n"
                + _uncommented_header(edited, original)
            )
            continue
        return values


def _uncommented(text: str) -> str:
    # Only unindented comment lines: an indented "#" is content (a block of text with a Markdown heading).
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def _uncommented_header(edited: str, original: str) -> str:
    """The user's text without an earlier error note (kept: their own content and the header)."""
    lines = edited.splitlines(keepends=True)
    while lines and lines[0].startswith(("# ERROR:", "# Fix it and save")):
        lines.pop(0)
    return "".join(lines) or original


def _yaml_dump(value: dict[str, Any]) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper, data: str):  # multi-line text as a block, as a person would write it
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)

    _Dumper.add_representer(str, text)
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _edit_changes(template, values: dict[str, Any], file: str | None) -> tuple[dict[str, Any], int | None]:
    """Content changes from an edit record; identity fields must match the template being edited."""
    from kb import templates as T

    values = dict(values)
    for field in READ_ONLY_FIELDS:
        values.pop(field, None)
    file_version = values.pop("version", None)
    if file_version is not None and not isinstance(file_version, int):
        raise InputError("must be an integer", file=file, field="version")
    storable.check_int32(file_version, file=file, field="version")
    for field in ("key", "category", "section"):
        if field in values and values.pop(field) != getattr(template, field):
            raise InputError(
                f"is part of the template's key and cannot change in an edit (template {template.key!r}); "
                "add a new template instead",
                file=file,
                field=field,
            )
    unknown = sorted(set(values) - set(T.CONTENT_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}", file=file, field=unknown[0])
    # Validated here so that a bad value is reported with its file (the library knows only the field).
    T.TemplateSpec.from_dict({"name": template.key, "category": template.category, **values}, file=file)
    return values, file_version


@templates_group.command("revert")
@click.argument("ref")
@click.option("--to", "to_version", type=int, required=True, help="The version whose content comes back.")
@click.option(
    "--expect-version",
    type=int,
    default=None,
    help="Fail (exit 3, nothing written) unless the template is still at this version.",
)
@click.option("--note", help="Change note (default: 'revert to version N').")
@_write_options
@output_options(csv_ok=False)
@pass_app
def revert(
    app: AppContext,
    ref: str,
    to_version: int,
    expect_version: int | None,
    note: str | None,
    author: str | None,
    no_embed: bool,
    fmt: str,
) -> None:
    """Write a new version of template REF whose content equals version --to.

    History keeps every version; the new one's provenance names the version it restores.
    Already equal to it: nothing is written, exit 0.

    \b
    reasonflux templates revert "Algebra/Polynomials/Vieta's formulas" --to 2 --expect-version 4
    """
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        template = T.resolve(session, ref)
        version, changed = T.revert_template(
            session, template.id, to_version, expect_version=expect_version, author=author, change_note=note
        )
        embedded = _embed_or_warn(session, [version.id], no_embed) if changed else []
        result = {**_result(template, version, changed), "reverted_to": to_version, "embedded": embedded}
    if not changed and fmt == "table":
        click.echo(
            terminal_safe(
                f"no changes: {result['key']} version {result['version']} already has version "
                f"{to_version}'s content"
            )
        )
        return
    emit(result, fmt)


@templates_group.command("show")
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


@templates_group.command("list")
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


@templates_group.command("history")
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


@templates_group.command("blame")
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


@templates_group.command("diff")
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


@templates_group.command("deprecate")
@click.argument("ref")
@output_options(csv_ok=False)
@pass_app
def deprecate(app: AppContext, ref: str, fmt: str) -> None:
    """Mark template REF deprecated (kept, with its history; hidden from search by default)."""
    _set_status(app, ref, "deprecated", fmt)


@templates_group.command("restore")
@click.argument("ref")
@output_options(csv_ok=False)
@pass_app
def restore(app: AppContext, ref: str, fmt: str) -> None:
    """Make deprecated template REF active again."""
    _set_status(app, ref, "active", fmt)


def _set_status(app: AppContext, ref: str, status: str, fmt: str) -> None:
    from kb import templates as T
    from kb.db import session_scope

    with session_scope(app.db()) as session:
        before = T.resolve(session, ref).status
        template = T.set_status(session, ref, status)
        record = {
            "id": template.id,
            "key": template.key,
            "status": template.status,
            "changed": before != status,
        }
    emit(record, fmt)


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


def register(cli: click.Group) -> None:
    cli.add_command(templates_group)
