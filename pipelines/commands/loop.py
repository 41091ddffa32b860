"""`reasonflux loop`: the ReasonFlux loop (sample -> evaluate -> rewards -> pairs -> export -> train dpo ->
register, iterated) as one resumable command, and `reasonflux loop show` for its figures."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.errors import InputError
from kb.output import emit, output_options
from pipelines.llm.cli_options import llm_config_option, role_option

TABLE_COLUMNS = [
    "iteration",
    "navigator",
    "plans",
    "parse_rate",
    "right_template",
    "reward_mean",
    "reward_std",
    "pairs",
    "dpo_accuracy",
    "dpo_margin",
    "trained",
    "heldout_plans",
    "heldout_parse_rate",
    "heldout_right_template",
    "status",
]


def _parse_sets(sets: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{item!r} must look like FIELD=VALUE", field="--set")
        out[key.strip()] = value
    return out


def _logs_to_stderr():
    """Trainers and the libraries they load print logs (deepspeed binds its logger to the stdout it finds at
    import): they go to stderr, so stdout is only the command's result (--json)."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def _emit_show(result: dict, fmt: str) -> None:
    if fmt == "table":
        emit(result["iterations"], fmt, columns=TABLE_COLUMNS, title=f"loop {result['loop']}")
    else:
        emit(result, fmt)


@click.group("loop", invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML file with the loop's settings (keys: the flags' names with underscores; see docs/loop.md).",
)
@click.option("--name", default=None, help="The loop's id; running the same loop again continues it.")
@click.option("--iterations", type=int, default=None, help="Sample -> train rounds (default 2).")
@click.option("--problems", default=None, metavar="SELECTION", help="Problems sampled every iteration.")
@role_option("navigator", "The navigator of iteration 0.", dest="navigator", forms=False)
@click.option("--base-model", default=None, help="The model iteration 0 trains (default: the navigator's).")
@click.option(
    "--navigator-backend",
    type=click.Choice(["transformers", "vllm"]),
    default=None,
    help="Backend that runs the trained navigators (default transformers).",
)
@role_option("inference", "The inference role of evaluation.", dest="inference", forms=False)
@llm_config_option("TOML or YAML file with roles and sampling.")
@click.option("--n", type=int, default=None, help="Trajectories per problem and iteration (default 8).")
@click.option("--hint-k", type=int, default=None, help="Templates shown in the plan prompt (default 3).")
@click.option(
    "--retrieval-mode",
    type=click.Choice(["hybrid", "vector", "text", "hierarchical"]),
    default=None,
    help="How plan steps are linked to templates (default hybrid).",
)
@click.option("--max-steps", type=int, default=None, help="Most steps a plan may have.")
@click.option("--temperature", type=float, default=None, help="Navigator sampling temperature.")
@click.option("--max-tokens", type=int, default=None, help="Completion token limit of one plan.")
@click.option("--samples", type=int, default=None, help="Rollouts per similar problem (default 1).")
@click.option(
    "--min-margin", type=float, default=None, help="Smallest reward difference of a pair (default 0.2)."
)
@click.option(
    "--train-config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="DPO training config YAML.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A DPO training config field (repeatable), e.g. --set learning_rate=1e-6.",
)
@click.option("--num-gpus", type=int, default=None, help="GPUs for training (0: CPU).")
@click.option("--out-dir", default=None, help="Where the iterations' exports go.")
@click.option(
    "--eval-problems",
    default=None,
    metavar="SELECTION",
    help="Held-out problems every iteration's navigator plans for (parse rate, right-template share).",
)
@click.option("--eval-n", type=int, default=None, help="Plans per held-out problem (default 8).")
@click.option("--workers", type=int, default=None, help="Worker processes of sampling and evaluation.")
@output_options(csv_ok=False)
@click.pass_context
def loop(ctx: click.Context, config_path: str | None, sets: tuple[str, ...], fmt: str, **flags) -> None:
    """Run (or continue) the loop: each iteration samples with the navigator the previous one trained.

    Resumable: run the same command again after a kill and it continues where it stopped. `loop show`
    prints the figures of each iteration.
    """
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.loop import LoopConfig, run_loop

    app: AppContext = ctx.find_object(AppContext)
    cfg = LoopConfig.load(config_path, {**flags, "train": _parse_sets(sets) or None})
    with _logs_to_stderr():
        result = run_loop(app.db(), cfg)
    _emit_show(result, fmt)


@loop.command("show")
@click.argument("name", required=False)
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, name: str | None, fmt: str) -> None:
    """Per iteration: plans sampled, parse rate, rewards, pairs, DPO reward accuracy and margin, held-out figures
    (default: the latest loop)."""
    from pipelines.loop import show

    _emit_show(show(app.db(), name), fmt)


def register(cli: click.Group) -> None:
    cli.add_command(loop)
