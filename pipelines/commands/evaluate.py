"""`reasonflux rollouts` (formerly `evaluate`): roll trajectories out on their similar sets; rewards from the
rollouts."""

from __future__ import annotations

import click

from kb.cli import AppContext, deprecated_alias, pass_app
from kb.output import emit, output_options
from pipelines.llm.cli_options import llm_stage_options, role_option, runner_kwargs


@click.command("rollouts")
@click.option(
    "--trajectories",
    default="all",
    show_default=True,
    metavar="SELECTION",
    help="Which trajectories, e.g. 'navigator=qwen;split=train' or 'problem=1-50' (keys: ids, problem, "
    "navigator, run, source, split, subject, limit).",
)
@role_option("inference", "The inference LLM that follows the trajectories.")
@click.option("--samples", type=int, default=1, show_default=True, help="Rollouts per (trajectory, problem).")
@click.option(
    "--seed", "base_seed", type=int, default=0, show_default=True, help="Rollout i uses seed SEED+i."
)
@llm_stage_options
@output_options(csv_ok=False)
@pass_app
def evaluate_cmd(
    app: AppContext,
    trajectories: str,
    inference_spec: str | None,
    samples: int,
    base_seed: int,
    llm_config: str | None,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    workers: int,
    batch_size: int,
    lease_s: float | None,
    max_attempts: int | None,
    retry_failed: bool,
    fmt: str,
) -> None:
    """Follow each trajectory on its similar set's problems, grade the answers, store rollouts and rewards.

    Formerly `reasonflux evaluate` (too close to `eval`, which measures the solver's accuracy); that name
    still works for now, with a note on stderr.
    """
    from kb.runs import raise_for_outcome
    from pipelines.evaluate import DEFAULT_SAMPLING, evaluate
    from pipelines.llm.roles import resolve_role

    resolved = resolve_role(
        app.db(),
        "inference",
        inference_spec,
        llm_config,
        DEFAULT_SAMPLING,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
    )
    role, sampling, prompts_dir = resolved.config, resolved.sampling, resolved.prompts_dir
    result = evaluate(
        app.db(),
        trajectories,
        role,
        samples=samples,
        sampling=sampling,
        base_seed=base_seed,
        prompts_dir=prompts_dir,
        **runner_kwargs(workers, batch_size, lease_s, max_attempts, retry_failed),
    )
    emit(result, fmt)
    raise_for_outcome(result)  # exit 5 if every unit failed, 6 if some did


def register(cli: click.Group) -> None:
    cli.add_command(evaluate_cmd)
    cli.add_command(deprecated_alias(evaluate_cmd, "evaluate"))
