"""`reasonflux pairs`: build DPO pairs from stored rewards; list and show them."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("pairs")
def pairs() -> None:
    """DPO (chosen, rejected) trajectory pairs, built in SQL from rewards."""


@pairs.command("build")
@click.option("--min-margin", type=float, default=0.2, show_default=True, help="Least reward difference.")
@click.option(
    "--min-rollouts", type=int, default=4, show_default=True, help="Least rollouts behind each reward."
)
@click.option("--max-pairs-per-problem", type=int, default=4, show_default=True)
@click.option(
    "--similar-build", type=int, default=None, help="Only trajectories evaluated on this similar build."
)
@click.option("--navigator-model", default=None, help="Only trajectories of this navigator.")
@click.option("--no-refresh", is_flag=True, help="Use the rewards as last refreshed.")
@output_options(csv_ok=False)
@pass_app
def build_cmd(
    app: AppContext,
    min_margin: float,
    min_rollouts: int,
    max_pairs_per_problem: int,
    similar_build: int | None,
    navigator_model: str | None,
    no_refresh: bool,
    fmt: str,
) -> None:
    """Refresh rewards and insert the pairs (train-split anchors only); idempotent."""
    from pipelines.pairs import build_pairs

    emit(
        build_pairs(
            app.db(),
            refresh=not no_refresh,
            min_margin=min_margin,
            min_rollouts=min_rollouts,
            max_pairs_per_problem=max_pairs_per_problem,
            similar_build=similar_build,
            navigator_model=navigator_model,
        ),
        fmt,
    )


@pairs.command("list")
@output_options
@pass_app
def list_cmd(app: AppContext, fmt: str) -> None:
    """Pair selections (one per parameters hash) with counts."""
    from pipelines.pairs import list_pair_sets

    emit(list_pair_sets(app.db()), fmt)


@pairs.command("show")
@click.option("--params-hash", default=None, help="Selection (hash or prefix).")
@click.option("--problem", "problem_id", type=int, default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@output_options
@pass_app
def show_cmd(app: AppContext, params_hash: str | None, problem_id: int | None, limit: int, fmt: str) -> None:
    """Pairs with both rewards and the margin."""
    from pipelines.pairs import show_pairs

    emit(show_pairs(app.db(), params_hash_=params_hash, problem_id=problem_id, limit=limit), fmt)


def register(cli: click.Group) -> None:
    cli.add_command(pairs)
