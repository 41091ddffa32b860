"""`reasonflux rewards`: refresh and read trajectory rewards (computed in SQL)."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("rewards")
def rewards_group() -> None:
    """Trajectory rewards: mean rollout correctness over the similar set, with counts."""


@rewards_group.command("refresh")
@output_options(csv_ok=False)
@pass_app
def refresh_cmd(app: AppContext, fmt: str) -> None:
    """Recompute every trajectory's reward from the stored rollouts."""
    from kb.rewards import refresh_rewards
    from kb.runs import pipeline_run

    db = app.db()
    with pipeline_run(db, "rewards", {}) as (run_id, counts):
        counts.update(refresh_rewards(db))
    emit({"run_id": run_id, **counts}, fmt)


@rewards_group.command("show")
@click.option("--trajectory", "trajectory_id", type=int, default=None)
@click.option("--problem", "problem_id", type=int, default=None)
@click.option(
    "--live", is_flag=True, help="Compute now from the rollouts instead of reading the refreshed view."
)
@click.option("--limit", type=int, default=100, show_default=True)
@output_options
@pass_app
def show_cmd(
    app: AppContext, trajectory_id: int | None, problem_id: int | None, live: bool, limit: int, fmt: str
) -> None:
    """Rewards with n_rollouts, n_correct, n_problems_evaluated, set_size and complete."""
    from kb.rewards import REWARD_COLUMNS, rewards

    emit(
        rewards(app.db(), trajectory_id=trajectory_id, problem_id=problem_id, live=live, limit=limit),
        fmt,
        columns=REWARD_COLUMNS,
    )


def register(cli: click.Group) -> None:
    cli.add_command(rewards_group)
