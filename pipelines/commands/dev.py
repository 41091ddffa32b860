"""`reasonflux dev`: developer helpers (the tiny offline model)."""

from __future__ import annotations

import click

from kb.output import emit, output_options


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
    from pipelines.tiny_model import build_tiny_model

    path = build_tiny_model(directory, seed=seed, hidden_size=hidden_size, layers=layers)
    emit({"path": str(path), "seed": seed, "hidden_size": hidden_size, "layers": layers}, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(dev)
