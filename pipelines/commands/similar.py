"""`reasonflux similar`: build versioned similar-problem sets, list builds, show a set."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("similar")
def similar() -> None:
    """Similar-problem sets (embedding nearest neighbours), versioned by their parameters."""


@similar.command("build")
@click.option("--k", type=int, default=8, show_default=True, help="Members per set.")
@click.option("--min-similarity", type=float, default=0.5, show_default=True, help="Cosine similarity floor.")
@click.option("--same-subject", is_flag=True, help="Members must have the anchor's subject.")
@click.option(
    "--shared-tags",
    is_flag=True,
    help="Members must share a tag with the anchor (problem tags or tags of templates its trajectories use).",
)
@click.option(
    "--anchors",
    default=None,
    metavar="SELECTION",
    help="Which anchors, e.g. 'split=train;source=math500;ids=1-50,77' (keys: ids, source, split, "
    "subject, level, has, limit; default: all).",
)
@click.option(
    "--model", default=None, help="Embedding model (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2)."
)
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Anchors per SQL statement (index path)."
)
@click.option(
    "--path",
    "path",
    type=click.Choice(["auto", "exact", "index"]),
    default="auto",
    show_default=True,
    help="exact: one matrix product per block of anchors; index: the HNSW index per anchor; auto: "
    "exact while the candidate pool is small enough. Same sets and build either way.",
)
@output_options(csv_ok=False)
@pass_app
def build_cmd(
    app: AppContext,
    k: int,
    min_similarity: float,
    same_subject: bool,
    shared_tags: bool,
    anchors: str | None,
    model: str | None,
    batch_size: int,
    path: str,
    fmt: str,
) -> None:
    """Build sets for these parameters; the same parameters again only fill anchors that have none."""
    from pipelines.similar import build_similar_sets

    emit(
        build_similar_sets(
            app.db(),
            k=k,
            min_similarity=min_similarity,
            same_subject=same_subject,
            shared_tags=shared_tags,
            anchors=anchors,
            model=model,
            batch_size=batch_size,
            path=path,
        ),
        fmt,
    )


@similar.command("builds")
@output_options
@pass_app
def builds_cmd(app: AppContext, fmt: str) -> None:
    """Every build: id, method, parameters, how many sets and members."""
    from kb.db import session_scope
    from pipelines.similar import list_builds

    with session_scope(app.db()) as s:
        emit(list_builds(s), fmt)


@similar.command("show")
@click.argument("anchor", type=int)
@click.option(
    "--build", "build_id", type=int, default=None, help="Build id (default: the newest with a set)."
)
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, anchor: int, build_id: int | None, fmt: str) -> None:
    """The similar set of problem ANCHOR, members by rank."""
    from kb.db import session_scope
    from pipelines.similar import show_set

    with session_scope(app.db()) as s:
        result = show_set(s, anchor, build_id)
    if fmt == "table":
        members = result.pop("members")
        emit(result, fmt)
        emit(members, fmt, title="members")
    else:
        emit(result, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(similar)
