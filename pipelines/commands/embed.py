"""`reasonflux embed`: compute (or recompute) embeddings for templates and problems."""

from __future__ import annotations

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options


@click.command("embed")
@click.option(
    "--model",
    default=None,
    help="Embedding model: all-MiniLM-L6-v2, a registered retriever or a local sentence-transformers folder "
    "(default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2).",
)
@click.option(
    "--what",
    type=click.Choice(["templates", "problems", "all"]),
    default="all",
    show_default=True,
    help="Which items to embed.",
)
@click.option(
    "--recompute",
    is_flag=True,
    help="Re-embed even items whose stored vector was made from the same text by the same model.",
)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
@output_options(csv_ok=False)
@pass_app
def embed_cmd(
    app: AppContext, model: str | None, what: str, recompute: bool, batch_size: int, fmt: str
) -> None:
    """Embed current template versions and problems lacking an up-to-date vector for MODEL.

    One pipeline run (stage "embed"); re-running it writes nothing new. Models other than
    the default get their own partial HNSW index the first time they are used.
    """
    from kb.embeddings import get_embedder
    from kb.runs import pipeline_run
    from pipelines.embed import embed_problems, embed_templates

    db = app.db()
    embedder = get_embedder(model, db)
    params = {"model": embedder.name, "what": what, "recompute": recompute, "batch_size": batch_size}
    with pipeline_run(db, "embed", params) as (run_id, counts):
        if what in ("templates", "all"):
            counts["templates"] = embed_templates(
                db, embedder.name, run_id=run_id, recompute=recompute, batch_size=batch_size
            )
        if what in ("problems", "all"):
            counts["problems"] = embed_problems(
                db, embedder.name, run_id=run_id, recompute=recompute, batch_size=batch_size
            )
    emit({"run_id": run_id, "model": embedder.name, "dim": embedder.dim, **counts}, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(embed_cmd)
