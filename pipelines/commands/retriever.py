"""`reasonflux retriever`: fine-tune, register, list and evaluate template retrievers."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options

_SOURCES_HELP = (
    "Pair sources and weights, e.g. 'examples=1,mining=2,solve_steps=0' (sources: examples, "
    "mining, solve_steps, trajectories; default weight 1 each; 0 switches one off)."
)


def _pair_options(f):
    for opt in reversed(
        [
            click.option("--sources", default=None, metavar="SOURCE=WEIGHT,...", help=_SOURCES_HELP),
            click.option(
                "--min-reward",
                type=float,
                default=0.5,
                show_default=True,
                help="Trajectory steps count when their trajectory's reward is at least this.",
            ),
            click.option(
                "--hard-negatives",
                type=click.IntRange(0, 16),
                default=1,
                show_default=True,
                help="Per pair, the best-ranked wrong templates of the current index.",
            ),
            click.option(
                "--negatives-model",
                default=None,
                help="The index whose ranking gives the hard negatives (default: the base model, or "
                "REASONFLUX_EMBED_MODEL for `pairs`).",
            ),
        ]
    ):
        f = opt(f)
    return f


def _hyper_options(f):
    from pipelines.retriever.fit_config import HyperParams

    d = HyperParams()
    for opt in reversed(
        [
            click.option("--epochs", type=int, default=d.epochs, show_default=True),
            click.option(
                "--batch-size",
                type=int,
                default=d.batch_size,
                show_default=True,
                help="Queries per step; the others' templates are each query's in-batch negatives.",
            ),
            click.option("--learning-rate", type=float, default=d.learning_rate, show_default=True),
            click.option("--max-steps", type=int, default=None, help="Stop after this many steps."),
            click.option(
                "--max-seq-length",
                type=int,
                default=d.max_seq_length,
                show_default=True,
                help="Word pieces per text while training (the saved model keeps its window).",
            ),
            click.option("--seed", type=int, default=d.seed, show_default=True),
            click.option(
                "--device", default=None, help="torch device (default: cuda when present, else cpu)."
            ),
        ]
    ):
        f = opt(f)
    return f


def _hp(epochs, batch_size, learning_rate, max_steps, max_seq_length, seed, device):
    from pipelines.retriever.fit_config import HyperParams

    return HyperParams(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_steps=max_steps,
        max_seq_length=max_seq_length,
        seed=seed,
        device=device,
    ).check()


@click.group("retriever")
def retriever() -> None:
    """Template retrievers fine-tuned on the KB's own (query, template) pairs."""


@retriever.command("train")
@click.option("--name", required=True, help="Name to register the model under (accepted by every --model).")
@click.option(
    "--base-model",
    default=None,
    help="Start from: all-MiniLM-L6-v2, a registered retriever or a local folder "
    "(default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Model folder (default: $REASONFLUX_HOME/retrievers/NAME); must not hold anything.",
)
@click.option(
    "--pairs-out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of the pairs' dataset version (default: the model folder + '-pairs').",
)
@click.option(
    "--exclude-category",
    "exclude_categories",
    multiple=True,
    help="Leave a chapter's pairs out (repeatable).",
)
@_pair_options
@_hyper_options
@click.option(
    "--embed/--no-embed",
    default=True,
    show_default=True,
    help="Embed the library's current templates with the new model (same as "
    "`reasonflux embed --model NAME --what templates`).",
)
@output_options(csv_ok=False)
@pass_app
def train_cmd(
    app: AppContext,
    name,
    base_model,
    out,
    pairs_out,
    exclude_categories,
    sources,
    min_reward,
    hard_negatives,
    negatives_model,
    epochs,
    batch_size,
    learning_rate,
    max_steps,
    max_seq_length,
    seed,
    device,
    embed,
    fmt,
) -> None:
    """Export pairs, fine-tune, register NAME and embed the library with it (one pipeline run).

    The default model is never replaced: search keeps using it until --model NAME or
    REASONFLUX_EMBED_MODEL=NAME says otherwise.
    """
    from pipelines.retriever.train import train_retriever

    hp = _hp(epochs, batch_size, learning_rate, max_steps, max_seq_length, seed, device)
    result = train_retriever(
        app.db(),
        name=name,
        base_model=base_model,
        out=out,
        pairs_out=pairs_out,
        hp=hp,
        embed=embed,
        weights=sources,
        min_reward=min_reward,
        hard_negatives=hard_negatives,
        negatives_model=negatives_model,
        exclude_categories=list(exclude_categories),
    )
    emit(result, fmt)


@retriever.command("pairs")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the dataset version.")
@click.option(
    "--exclude-category", "exclude_categories", multiple=True, help="Leave a chapter out (repeatable)."
)
@_pair_options
@output_options(csv_ok=False)
@pass_app
def pairs_cmd(
    app: AppContext, out, exclude_categories, sources, min_reward, hard_negatives, negatives_model, fmt
) -> None:
    """Export the (query, template) pairs alone, as a versioned dataset (what `train` trains on)."""
    from kb.runs import pipeline_run
    from pipelines.retriever.pairs import export_pairs

    db = app.db()
    options = {
        "weights": sources,
        "min_reward": min_reward,
        "hard_negatives": hard_negatives,
        "negatives_model": negatives_model,
        "exclude_categories": list(exclude_categories),
    }
    with pipeline_run(db, "export", {"kind": "retriever-pairs", "out": str(out)}) as (run_id, counts):
        manifest = export_pairs(db, out, run_id=run_id, **options)
        counts.update(manifest["row_counts"])
    emit(
        {
            "id": manifest["id"],
            "path": manifest["path"],
            **manifest["row_counts"],
            **{f"pairs_{k}": v for k, v in manifest["pairs_by_source"].items()},
        },
        fmt,
    )


@retriever.command("list")
@output_options
@pass_app
def list_cmd(app: AppContext, fmt: str) -> None:
    """Registered retrievers: name, base model, pairs version, when."""
    from pipelines.retriever.registry import list_retrievers

    rows = list_retrievers(app.db())
    if fmt in ("table", "csv"):
        rows = [
            {k: r[k] for k in ("name", "base_model", "dataset_version_id", "path", "run_id", "created_at")}
            for r in rows
        ]
    emit(rows, fmt)


@retriever.command("show")
@click.argument("name")
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, name: str, fmt: str) -> None:
    """One registered retriever with its hyper-parameters and metrics."""
    from pipelines.retriever.registry import get_retriever

    emit(get_retriever(app.db(), name), fmt)


@retriever.command("eval")
@click.option("--base-model", default=None, help="Model to fine-tune per fold (default: as `train`).")
@click.option(
    "--chapter",
    "chapters",
    multiple=True,
    help="Evaluate only these chapters' folds (repeatable; default: every chapter with worked examples).",
)
@_pair_options
@_hyper_options
@output_options(csv_ok=False)
@pass_app
def eval_cmd(
    app: AppContext,
    base_model,
    chapters,
    sources,
    min_reward,
    hard_negatives,
    negatives_model,
    epochs,
    batch_size,
    learning_rate,
    max_steps,
    max_seq_length,
    seed,
    device,
    fmt,
) -> None:
    """Leave-one-chapter-out: per chapter, fine-tune on the other chapters' pairs, query with its examples.

    Prints recall@1, recall@5 and MRR@10 per fold and their mean over folds, zero-shot against
    fine-tuned, hybrid and vector, for the problem and the navigator's query form. Writes
    nothing to the KB; fold models live in temporary folders.
    """
    from pipelines.retriever.evaluate import leave_one_chapter_out

    hp = _hp(epochs, batch_size, learning_rate, max_steps, max_seq_length, seed, device)
    result = leave_one_chapter_out(
        app.db(),
        base_model=base_model,
        hp=hp,
        chapters=list(chapters) or None,
        weights=sources,
        min_reward=min_reward,
        hard_negatives=hard_negatives,
        negatives_model=negatives_model,
        log=lambda m: click.echo(m, err=True),
    )
    if fmt == "table":
        emit(result["folds"], fmt, title="folds")
        emit(result["rows"], fmt, title="per held-out chapter")
        emit(result["mean"], fmt, title="mean over held-out chapters")
    else:
        emit(result, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(retriever)
