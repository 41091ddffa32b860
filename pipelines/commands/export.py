"""`reasonflux export`: write immutable, verifiable dataset versions (Parquet, optional JSONL)."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit

SUMMARY = ("id", "kind", "path", "row_counts", "schema_revision", "created_at")


def _common(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")(f)
    f = click.option("--jsonl", "with_jsonl", is_flag=True, help="Also write JSONL next to the Parquet files.")(f)
    f = click.option("--format", "data_format", type=click.Choice(["parquet", "jsonl"]), default="parquet",
                     show_default=True, help="Data file format (--jsonl adds JSONL to Parquet).")(f)
    f = click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="Folder to create (must not exist, be empty, or hold this same version).")(f)
    return f


def _run(app: AppContext, kind: str, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool,
         **selection) -> None:
    from pipelines.export import export

    formats = ("jsonl",) if data_format == "jsonl" else (("parquet", "jsonl") if with_jsonl else ("parquet",))
    manifest = export(app.db(), kind, out_dir, formats=formats, **selection)
    emit(manifest if as_json else {k: manifest[k] for k in SUMMARY}, "json" if as_json else "table")


@click.group("export")
def export_group() -> None:
    """Dataset versions: dpo, sft, templates, problems (manifest.json + README.md card + data files)."""


@export_group.command("dpo")
@_common
@click.option("--pairs", default=None, metavar="PARAMS_HASH",
              help="Which pair selection (hash or prefix; default: the most recently built).")
@click.option("--min-margin", type=float, default=0.0, show_default=True, help="Keep pairs with at least this margin.")
@pass_app
def dpo_cmd(app: AppContext, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool, pairs: str | None,
            min_margin: float) -> None:
    """DPO pairs in TRL's conversational preference format (prompt / chosen / rejected)."""
    _run(app, "dpo", out_dir, data_format, with_jsonl, as_json, pairs=pairs, min_margin=min_margin)


@export_group.command("sft")
@_common
@pass_app
def sft_cmd(app: AppContext, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool) -> None:
    """Stage-1 SFT data: template name + tags -> description + application scope (`messages`)."""
    _run(app, "sft", out_dir, data_format, with_jsonl, as_json)


@export_group.command("templates")
@_common
@pass_app
def templates_cmd(app: AppContext, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool) -> None:
    """Current version of every template (JSONL: the template interchange records)."""
    _run(app, "templates", out_dir, data_format, with_jsonl, as_json)


@export_group.command("problems")
@_common
@click.option("--problems", default=None, metavar="SELECTION",
              help="Which problems, e.g. 'source=math500;split=test' (default: all).")
@pass_app
def problems_cmd(app: AppContext, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool,
                 problems: str | None) -> None:
    """Problems with solutions and answers."""
    _run(app, "problems", out_dir, data_format, with_jsonl, as_json, problems=problems)


def register(cli: click.Group) -> None:
    cli.add_command(export_group)
