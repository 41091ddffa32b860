"""`reasonflux problems`: import problem files, list, show and search them."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("problems")
def problems() -> None:
    """Problems: import (presets math500, aime, or a field mapping), list, show, search."""


@problems.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["jsonl", "json"]),
    default="jsonl",
    show_default=True,
    help="Input file format.",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="FIELD=KEY[,...]",
    help="Read FIELD from KEY, e.g. problem=question,answer=final. Fields: problem, solution, answer, "
    "subject, difficulty, source_id, split, tags.",
)
@click.option(
    "--preset",
    type=click.Choice(["math500", "aime"]),
    default=None,
    help="Field layout of a known dataset (math500: level -> difficulty, unique_id -> source_id; "
    "aime: id -> source_id).",
)
@click.option(
    "--source", default=None, help="Dataset name stored with each problem (default: preset or file name)."
)
@click.option("--split", default=None, help="Split for records without one (default: preset's, else train).")
@click.option(
    "--license",
    "license_id",
    default=None,
    metavar="ID",
    help="Licence of this file's data (a Hub licence id: apache-2.0, mit, cc-by-4.0, other), "
    "recorded with the import run; exports of this data default to it (docs/data.md, "
    "Licences).",
)
@click.option("--no-embed", is_flag=True, help="Do not embed the new problems now.")
@click.option(
    "--model", default=None, help="Embedding model (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON (--format names the input's)."
)
@pass_app
def import_cmd(
    app: AppContext,
    file: str,
    file_format: str,
    mapping: tuple[str, ...],
    preset: str | None,
    source: str | None,
    split: str | None,
    license_id: str | None,
    no_embed: bool,
    model: str | None,
    as_json: bool,
) -> None:
    """Import FILE in one transaction; problems already stored (same normalised text) are not duplicated."""
    from pipelines.problems import import_problems, parse_mapping

    result = import_problems(
        app.db(),
        file,
        fmt=file_format,
        mapping=parse_mapping(mapping),
        preset=preset,
        source=source,
        split=split,
        embed=not no_embed,
        embed_model=model,
        license=license_id,
    )
    emit(result, "json" if as_json else "table")


@problems.command("list")
@click.option("--source", default=None)
@click.option("--split", default=None)
@click.option("--subject", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@output_options
@pass_app
def list_cmd(app: AppContext, source, split, subject, limit: int, offset: int, fmt: str) -> None:
    """List problems by id."""
    from kb.db import session_scope
    from pipelines.problems import LIST_COLUMNS, list_problems

    with session_scope(app.db()) as s:
        rows = list_problems(s, source=source, split=split, subject=subject, limit=limit, offset=offset)
    emit(rows, fmt, columns=LIST_COLUMNS)


@problems.command("show")
@click.argument("problem_id", type=int)
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, problem_id: int, fmt: str) -> None:
    """One problem with its embeddings' models and the similar sets anchored on it."""
    from kb.db import session_scope
    from pipelines.problems import get_problem

    with session_scope(app.db()) as s:
        emit(get_problem(s, problem_id), fmt)


@problems.command("search")
@click.argument("query")
@click.option("--text", "mode", flag_value="text", help="Full-text match instead of embedding similarity.")
@click.option(
    "--embedding", "mode", flag_value="embedding", default=True, help="Embedding similarity (default)."
)
@click.option("--split", default=None)
@click.option("--limit", type=int, default=10, show_default=True)
@click.option("--model", default=None, help="Embedding model.")
@output_options
@pass_app
def search_cmd(
    app: AppContext, query: str, mode: str, split: str | None, limit: int, model: str | None, fmt: str
) -> None:
    """Problems nearest to QUERY (embedding cosine similarity, or full-text rank with --text)."""
    from pipelines.problems import search_problems

    emit(search_problems(app.db(), query, mode=mode, limit=limit, model=model, split=split), fmt)


def register(cli: click.Group) -> None:
    cli.add_command(problems)
