"""`reasonflux mine`: thought templates from solved problems and successful solve sessions."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options
from pipelines.llm.cli_options import llm_stage_options, role_option, runner_kwargs


@click.command("mine")
@click.option(
    "--problems",
    default="all",
    show_default=True,
    metavar="SELECTION",
    help="Which problems, e.g. 'source=math500;split=test;limit=20' or 'ids=1-20,31' "
    "(keys: ids, source, split, subject, level, has, limit).",
)
@role_option("miner", "The LLM that writes templates.")
@click.option(
    "--max-retries",
    type=int,
    default=2,
    show_default=True,
    help="Re-asks per problem when the reply does not parse (each failure is recorded).",
)
@click.option("--embed-model", default=None, help="Embedding model for deduplication (default: the KB's).")
@llm_stage_options
@output_options(csv_ok=False)
@pass_app
def mine_cmd(
    app: AppContext,
    problems: str,
    miner_spec: str | None,
    max_retries: int,
    embed_model: str | None,
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
    """Mine templates: parse strictly, retry boundedly, dedupe against the KB into new versions."""
    from kb.runs import raise_for_outcome
    from pipelines.llm.roles import resolve_role
    from pipelines.mine import DEFAULT_SAMPLING, mine

    resolved = resolve_role(
        app.db(),
        "miner",
        miner_spec,
        llm_config,
        DEFAULT_SAMPLING,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
    )
    role, sampling, prompts_dir = resolved.config, resolved.sampling, resolved.prompts_dir
    result = mine(
        app.db(),
        problems,
        role,
        max_retries=max_retries,
        sampling=sampling,
        prompts_dir=prompts_dir,
        embed_model=embed_model,
        **runner_kwargs(workers, batch_size, lease_s, max_attempts, retry_failed),
    )
    emit(result, fmt)
    raise_for_outcome(result)  # exit 5 if every unit failed, 6 if some did


def register(cli: click.Group) -> None:
    cli.add_command(mine_cmd)
