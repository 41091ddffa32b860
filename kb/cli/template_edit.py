"""`reasonflux templates` commands that write versions or status: add, edit (from a file, flags or $EDITOR),
revert, deprecate, restore. Every write goes through kb.templates (versioned, optimistic locking)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from kb import storable
from kb.cli.context import AppContext, pass_app
from kb.cli.template_input import (
    READ_ONLY_FIELDS,
    content_options,
    embed_or_warn,
    file_records,
    flag_values,
    version_result,
    write_options,
)
from kb.errors import InputError
from kb.output import emit, output_options, terminal_safe


@click.command("add")
@content_options
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
    overrides = flag_values(flags)
    specs = [
        T.TemplateSpec.from_dict({**record, **overrides}, file=name, record=where)
        for record, where in file_records(file)
    ]
    results = []
    with session_scope(app.db()) as session:
        for spec in specs:
            version = T.create_template(
                session, spec, source_kind="user", source_ref=name, change_note=note, author=author
            )
            record = version_result(T.resolve(session, version.template_id), version, True)
            results.append({k: v for k, v in record.items() if k != "changed"})
        embedded = embed_or_warn(session, [r["version_id"] for r in results], no_embed)
    emit([{**r, "embedded": embedded} for r in results], fmt)


@click.command("edit")
@click.argument("ref")
@content_options
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
    records = file_records(file)
    if len(records) != 1:
        raise InputError("edit takes one template; the file holds a list", file=name)
    record, _ = records[0]
    values = {**record, **flag_values(flags)}
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
        embedded = embed_or_warn(session, [version.id], no_embed) if changed else []
        result = {**version_result(template, version, changed), "embedded": embedded}
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


@click.command("revert")
@click.argument("ref")
@click.option("--to", "to_version", type=int, required=True, help="The version whose content comes back.")
@click.option(
    "--expect-version",
    type=int,
    default=None,
    help="Fail (exit 3, nothing written) unless the template is still at this version.",
)
@click.option("--note", help="Change note (default: 'revert to version N').")
@write_options
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
        embedded = embed_or_warn(session, [version.id], no_embed) if changed else []
        result = {
            **version_result(template, version, changed),
            "reverted_to": to_version,
            "embedded": embedded,
        }
    if not changed and fmt == "table":
        click.echo(
            terminal_safe(
                f"no changes: {result['key']} version {result['version']} already has version "
                f"{to_version}'s content"
            )
        )
        return
    emit(result, fmt)


@click.command("deprecate")
@click.argument("ref")
@output_options(csv_ok=False)
@pass_app
def deprecate(app: AppContext, ref: str, fmt: str) -> None:
    """Mark template REF deprecated (kept, with its history; hidden from search by default)."""
    _set_status(app, ref, "deprecated", fmt)


@click.command("restore")
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
