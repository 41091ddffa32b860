"""`reasonflux templates search`: ranked templates for a query, or for a file of queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kb import config
from kb.cli.context import AppContext, pass_app
from kb.errors import InputError
from kb.output import dumps, emit, output_options
from kb.retrieval_modes import MODES
from kb.storable import parse_json, too_deep

TABLE_COLUMNS = ["rank", "score", "template_id", "key", "vector_score", "text_score"]


def read_queries(path: str) -> list[dict[str, Any]]:
    """Records of a JSONL file, each with a non-empty string `query`; all are checked before any search."""
    name = "<stdin>" if path == "-" else path
    text = click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text(encoding="utf-8")
    records = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg})", file=name, record=f"line {no}") from None
        except RecursionError:
            raise too_deep(file=name, record=f"line {no}") from None
        except ValueError as e:  # a key named twice, an integer of more than 4300 digits
            raise InputError(f"not valid JSON ({e})", file=name, record=f"line {no}") from None
        if not isinstance(record, dict):
            raise InputError('must be a JSON object like {"query": "..."}', file=name, record=f"line {no}")
        if not isinstance(record.get("query"), str) or not record["query"].strip():
            raise InputError(
                "is required and must be a non-empty string", file=name, record=f"line {no}", field="query"
            )
        records.append(record)
    return records


@click.command("search")
@click.argument("query", required=False)
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="JSONL file of {\"query\": ...} records ('-': stdin); prints one JSON line per query.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="hybrid",
    show_default=True,
    help="hybrid: vector + full text, fused; hierarchical: the ReasonFlux-v1 matcher.",
)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=5, show_default=True, help="How many results.")
@click.option("--tag", "tags", multiple=True, help="Only templates with this tag (repeat: all of them).")
@click.option("--category", help="Only this category, or 'category/section'.")
@click.option(
    "--status", type=click.Choice(["active", "deprecated", "all"]), default="active", show_default=True
)
@click.option(
    "--model", default=None, help="Embedding model (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2)."
)
@output_options(csv_ok=False)
@pass_app
def search(
    app: AppContext,
    query: str | None,
    queries_file: str | None,
    mode: str,
    k: int,
    tags: tuple[str, ...],
    category: str | None,
    status: str,
    model: str | None,
    fmt: str,
) -> None:
    """Templates ranked for QUERY (a problem or a description), with scores.

    Searches the current version of each template. With --queries, the embedding
    model loads once and each input record comes back as one JSON line: its own
    fields plus `results`.
    """
    from kb.retrieval import search_many, search_templates

    if (query is None) == (queries_file is None):
        raise click.UsageError("give either QUERY or --queries FILE")
    options = {
        "k": k,
        "mode": mode,
        "model": model,
        "tags": list(tags) or None,
        "category": category,
        "status": status,
    }
    db = app.db()
    if mode != "text":
        _warn_missing_vectors(db, config.embed_model_name(model))
    if queries_file is not None:
        records = read_queries(queries_file)
        results = search_many(db, [r["query"] for r in records], **options)
        for record, hits in zip(records, results):
            click.echo(dumps({**record, "results": [h.to_dict() for h in hits]}))
        return
    hits = [h.to_dict() for h in search_templates(db, query, **options)]
    emit(hits, fmt, columns=TABLE_COLUMNS if fmt == "table" else None, title=f"{mode} search")


def _warn_missing_vectors(db, model: str) -> None:
    """Current versions without a vector cannot be ranked by vector or hybrid search: say so, with the fix."""
    from kb.template_vectors import missing_vectors, missing_vectors_advice

    with db.engine.connect() as conn:
        counts = missing_vectors(conn, [model])
    for line in missing_vectors_advice(counts):
        click.echo(f"warning: {line}", err=True)


def register(cli: click.Group) -> None:
    group = cli.commands.get("templates")
    if group is None:  # the templates group is registered first; stand alone if it is absent
        group = click.Group("templates", help="Versioned thought templates.")
        cli.add_command(group)
    group.add_command(search)
