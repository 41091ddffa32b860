"""`reasonflux import`: template libraries from files (one transaction, one pipeline run per file)."""

from __future__ import annotations

from pathlib import Path

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options


@click.group("import")
def import_group() -> None:
    """Import template libraries (re-importing an unchanged file writes nothing)."""


def _import_options(f):
    f = click.option(
        "--license",
        "license_id",
        default=None,
        metavar="ID",
        help="Licence of this file's templates (a Hub licence id: apache-2.0, mit, cc-by-4.0, other), "
        "recorded with the import run; exports of this data default to it (docs/data.md, "
        "Licences).",
    )(f)
    f = click.option("--note", default=None, help="Change note for the versions this import writes.")(f)
    f = click.option(
        "--model", default=None, help="Embedding model (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2)."
    )(f)
    f = click.option(
        "--no-embed", is_flag=True, help="Skip computing embeddings (run `reasonflux embed` later)."
    )(f)
    return click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))(f)


def _run(
    app: AppContext,
    file: Path,
    fmt: str,
    no_embed: bool,
    model: str | None,
    note: str | None,
    out_fmt: str,
    license_id: str | None,
) -> None:
    from pipelines.import_templates import import_file

    result = import_file(app.db(), file, fmt, embed=not no_embed, model=model, note=note, license=license_id)
    emit({"run_id": result.run_id, "file": str(file), "format": fmt, **result.counts}, out_fmt)


@import_group.command("reasonflux-v1")
@_import_options
@output_options(csv_ok=False)
@pass_app
def import_v1(
    app: AppContext,
    file: Path,
    no_embed: bool,
    model: str | None,
    note: str | None,
    fmt: str,
    license_id: str | None,
) -> None:
    """Import FILE in the ReasonFlux-v1 library layout (chapter -> section -> list of templates).

    Chapters become categories and sections become sections. Drift in the source
    (list or text scenarios, example layouts, type spellings, repeated names) is
    normalised; every source value not reproduced exactly is kept in extra.
    """
    _run(app, file, "reasonflux-v1", no_embed, model, note, fmt, license_id)


@import_group.command("jsonl")
@_import_options
@output_options(csv_ok=False)
@pass_app
def import_jsonl(
    app: AppContext,
    file: Path,
    no_embed: bool,
    model: str | None,
    note: str | None,
    fmt: str,
    license_id: str | None,
) -> None:
    """Import FILE of template records, one JSON object per line (as `export templates` writes them)."""
    _run(app, file, "jsonl", no_embed, model, note, fmt, license_id)


def register(cli: click.Group) -> None:
    cli.add_command(import_group)
