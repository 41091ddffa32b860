"""`reasonflux sample`: navigator trajectories for problems."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options
from pipelines.llm.cli_options import llm_stage_options, role_option, runner_kwargs


@click.command("sample")
@click.option(
    "--problems",
    default="all",
    show_default=True,
    metavar="SELECTION",
    help="Which problems, e.g. 'split=train;limit=100' (keys: ids, source, split, subject, level, has, "
    "limit).",
)
@click.option("--n", type=int, default=8, show_default=True, help="Trajectories per problem.")
@role_option("navigator", "The navigator LLM.")
@click.option(
    "--navigator-name",
    default=None,
    help="Name the trajectories are stored under (default: the model name or path).",
)
@click.option(
    "--seed",
    "base_seed",
    type=int,
    default=0,
    show_default=True,
    help="Sample i uses seed SEED+i (recorded; the same seeds make a rerun idempotent).",
)
@click.option(
    "--hint-k",
    type=int,
    default=3,
    show_default=True,
    help="Templates retrieved for the problem and shown to the navigator (0: none).",
)
@click.option(
    "--retrieval-mode",
    type=click.Choice(["hybrid", "vector", "text", "hierarchical"]),
    default="hybrid",
    show_default=True,
    help="How steps are linked to template versions.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Longest trajectory the navigator may plan (in the prompt and the schema; recorded).",
)
@llm_stage_options
@output_options(csv_ok=False)
@pass_app
def sample_cmd(
    app: AppContext,
    problems: str,
    n: int,
    navigator_spec: str | None,
    navigator_name: str | None,
    base_seed: int,
    hint_k: int,
    retrieval_mode: str,
    max_steps: int,
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
    """Sample N trajectories per problem; unparseable plans are recorded as failures."""
    from kb.runs import raise_for_outcome
    from pipelines.llm.roles import resolve_role
    from pipelines.sample import DEFAULT_SAMPLING, sample

    resolved = resolve_role(
        app.db(),
        "navigator",
        navigator_spec,
        llm_config,
        DEFAULT_SAMPLING,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
    )
    role, sampling = resolved.config, resolved.sampling
    result = sample(
        app.db(),
        problems,
        role,
        n=n,
        navigator_name=navigator_name,
        sampling=sampling,
        base_seed=base_seed,
        hint_k=hint_k,
        retrieval_mode=retrieval_mode,
        max_steps=max_steps,
        **runner_kwargs(workers, batch_size, lease_s, max_attempts, retry_failed),
    )
    emit(result, fmt)
    raise_for_outcome(result)  # exit 5 if every unit failed, 6 if some did


def register(cli: click.Group) -> None:
    cli.add_command(sample_cmd)
