"""`reasonflux demo`: the whole loop on the embedded database, no network, no GPU."""

from __future__ import annotations

import click

from kb import config
from kb.cli.context import AppContext, pass_app


@click.command("demo")
@click.option("--no-llm", is_flag=True, help="Stop after templates, retrieval, versioning and a scripted solve.")
@click.option("--no-train", is_flag=True, help="Skip SFT/DPO training and the solve with the trained navigator.")
@pass_app
def demo(app: AppContext, no_llm: bool, no_train: bool) -> None:
    """Import the starter library, search, edit, solve; then mine, sample, evaluate, pairs, export, SFT, DPO
    and solve with the trained navigator on a tiny random model (minutes on a CPU)."""
    from serve.demo_loop import run_demo

    run_demo(app.db(), config.home_dir(), llm=not no_llm, train=not no_train)


def register(cli: click.Group) -> None:
    cli.add_command(demo)
