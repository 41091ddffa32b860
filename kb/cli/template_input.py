"""Turning `reasonflux templates` files and flags into template dicts: the content and write options, the
YAML/JSON/JSONL record files, and the result record a write prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kb import storable
from kb.errors import InputError
from kb.template_fields import CONTENT_FIELDS

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


def content_options(f):
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
    return write_options(_apply(options, f))


def _apply(options, f):
    for option in reversed(options):
        f = option(f)
    return f


def write_options(f):
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


def embed_or_warn(session, version_ids: list[int], no_embed: bool) -> list[str]:
    """Embed new versions inside the command's transaction; the models done. With --no-embed, say
    on stderr which models now lack vectors and how to fix it."""
    from kb import template_vectors as V

    conn = session.connection()
    if no_embed:
        for line in V.missing_vectors_advice(V.missing_vectors(conn)):
            click.echo(f"warning: {line}", err=True)
        return []
    return sorted(V.embed_versions(conn, version_ids))


# The content fields, with the template's own category and section after its name (`extra` has no flag).
FLAG_FIELDS = ("name", "category", "section", *(f for f in CONTENT_FIELDS if f not in ("name", "extra")))


def flag_values(kwargs: dict[str, Any]) -> dict[str, Any]:
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


def file_records(path: str | None) -> list[tuple[dict[str, Any], str | None]]:
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


def version_result(template, version, changed: bool) -> dict[str, Any]:
    return {
        "id": template.id,
        "key": template.key,
        "version": version.version_no,
        "changed": changed,
        "version_id": version.id,
        "content_hash": version.content_hash,
    }
