"""`reasonflux train sft|dpo|runs|show|fields` and `reasonflux navigators list`."""

from __future__ import annotations

import json

import click

from kb.cli.context import AppContext, pass_app
from kb.errors import InputError
from kb.output import emit, output_options

# pipelines.train.launch.DEFAULT_PROGRESS_TIMEOUT_S (not imported: it pulls in torch at CLI start)
PROGRESS_TIMEOUT_S = 1800.0


@click.group("train")
def train_group() -> None:
    """Train the navigator: stage-1 SFT and stage-2 DPO on verified dataset exports."""


def _stage_options(f):
    options = [
        click.option("--dataset", help="Dataset version id or export directory (verified before training)."),
        click.option(
            "--base-model",
            help="Local model directory, or registered navigator or model name (`reasonflux models`), to start from "
            "(config.json suffices for --dry-run).",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="YAML file of config fields (flags win over it).",
        ),
        click.option("--lr", "learning_rate", type=float, help="Learning rate."),
        click.option("--epochs", "num_train_epochs", type=float, help="Number of epochs."),
        click.option("--max-steps", type=int, help="Stop after N optimizer steps."),
        click.option("--batch-size", "per_device_train_batch_size", type=int, help="Micro-batch per device."),
        click.option(
            "--grad-accum", "gradient_accumulation_steps", type=int, help="Gradient accumulation steps."
        ),
        click.option("--cutoff", "max_length", type=int, help="Cutoff length in tokens."),
        click.option("--bf16/--no-bf16", default=None, help="bf16 mixed precision (GPU only)."),
        click.option(
            "--output-dir", help="Checkpoint directory (default under REASONFLUX_HOME/checkpoints)."
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="FIELD=VALUE",
            help="Any config field (see `reasonflux train fields`); repeatable.",
        ),
        click.option(
            "--deepspeed", help="DeepSpeed config: zero3, zero3_offload, zero2, ... or a .json path."
        ),
        click.option("--num-gpus", type=int, help="GPUs to use (default: all visible; 0 = CPU)."),
        click.option(
            "--gpu-memory-gb", type=float, help="GPU memory to plan for (default: detected, else 80)."
        ),
        click.option("--cpu-memory-gb", type=float, help="Host memory to check offloaded states against."),
        click.option(
            "--launcher",
            type=click.Choice(["auto", "inprocess", "accelerate"]),
            default="auto",
            show_default=True,
            help="auto: in this process on CPU, accelerate launch on GPUs.",
        ),
        click.option(
            "--progress-timeout",
            type=float,
            default=PROGRESS_TIMEOUT_S,
            show_default=True,
            metavar="SECONDS",
            help="Stop a launched run (accelerate) that prints nothing for this long.",
        ),
        click.option("--name", help="Navigator name to register (default navigator-<stage>-run<ID>)."),
        click.option(
            "--resume",
            type=int,
            metavar="RUN_ID",
            help="Resume a failed/interrupted run from its last checkpoint (a new run row).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the launch command, configs and memory estimate; validate; do not train.",
        ),
        output_options(csv_ok=False),
        pass_app,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _overrides(kwargs: dict, sets: tuple[str, ...]) -> dict:
    keys = (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "bf16",
        "output_dir",
        "beta",
    )
    out = {k: kwargs.get(k) for k in keys if kwargs.get(k) is not None}
    for item in sets:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise InputError(f"expected FIELD=VALUE, got {item!r}", field="set")
        out[field.strip()] = value
    return out


def _run_stage(app: AppContext, stage: str, fmt: str, kw: dict) -> None:
    from pipelines.train import execute, plan

    db = app.db()
    p = plan(
        db,
        stage,
        dataset=kw["dataset"],
        base_model=kw["base_model"],
        config_file=kw["config_file"],
        overrides=_overrides(kw, kw["sets"]),
        deepspeed=kw["deepspeed"],
        num_gpus=kw["num_gpus"],
        name=kw["name"],
        resume=kw["resume"],
        gpu_memory_gb=kw["gpu_memory_gb"],
        cpu_memory_gb=kw["cpu_memory_gb"],
        launcher=kw["launcher"],
        dry_run=kw["dry_run"],
        progress_timeout_s=kw["progress_timeout"],
    )
    if kw["dry_run"]:
        _print_plan(p.describe(), fmt)
        return
    run = execute(db, p)
    emit(
        {
            k: run.get(k)
            for k in (
                "id",
                "stage",
                "status",
                "navigator",
                "output_path",
                "dataset_version_id",
                "resumed_from",
                "metrics",
            )
        },
        fmt,
    )


def _print_plan(d: dict, fmt: str) -> None:
    import yaml

    if fmt != "table":
        emit(d, fmt)
        return
    echo = click.echo
    echo(f"# dry run: {d['stage']} (nothing was started)\n\n## launch command\n{d['command']}\n")
    echo(f"launcher: {d['launcher']}; output dir: {d['output_dir']}")
    echo(f"base model: {d['base_model']} ({d['model_params']['total']:,} parameters)")
    echo(
        f"dataset: {d['dataset']['id']} ({d['dataset']['kind']}) at {d['dataset']['path']}: "
        f"{len(d['dataset']['verified_files'])} file(s) verified against the manifest and the KB\n"
    )
    echo("## training config\n" + yaml.safe_dump(d["training_config"], sort_keys=False).rstrip() + "\n")
    if d["deepspeed"]:
        echo(f"## DeepSpeed config: {d['deepspeed']['name']} ({d['deepspeed']['path']})")
        echo(json.dumps(d["deepspeed_config"], indent=2) + "\n")
        m = d["memory_estimate"]
        echo(
            f"## memory estimate ({m['source']}): ZeRO-{m['zero_stage']}, {m['num_gpus']} GPU(s) of "
            f"{d['gpu_memory_gb']:g} GiB"
        )
        echo(
            f"this config: {m['per_gpu_gib']} GiB per GPU, {m['per_node_cpu_gib']} GiB CPU per node "
            f"(model states only; activations not included)"
        )
        if m.get("deepspeed_table"):
            echo(m["deepspeed_table"])
        echo("")
    if d["resume"]:
        echo(f"resumes run {d['resume']['run']} from {d['resume']['checkpoint']}")
    echo("## checks passed\n" + "\n".join(f"- {c}" for c in d["checks"]))


@train_group.command("sft")
@_stage_options
def sft(app: AppContext, fmt: str, **kw) -> None:
    """Stage 1: supervised fine-tuning on a templates (sft) export."""
    _run_stage(app, "sft", fmt, kw)


@train_group.command("dpo")
@_stage_options
@click.option("--beta", type=float, help="DPO beta (deviation from the reference model).")
def dpo(app: AppContext, fmt: str, **kw) -> None:
    """Stage 2: DPO on a trajectory-pairs (dpo) export."""
    _run_stage(app, "dpo", fmt, kw)


@train_group.command("runs")
@click.option("--stage", type=click.Choice(["sft", "dpo"]))
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "interrupted"]))
@click.option("--limit", type=int, default=50, show_default=True)
@output_options
@pass_app
def runs(app: AppContext, stage: str | None, status: str | None, limit: int, fmt: str) -> None:
    """List training runs, newest first."""
    from pipelines.train import list_runs

    emit(list_runs(app.db(), stage=stage, status=status, limit=limit), fmt, title="training runs")


@train_group.command("show")
@click.argument("run_id", type=int)
@click.option("--steps/--no-steps", default=False, help="Include the per-step metrics.")
@output_options(csv_ok=False)
@pass_app
def show(app: AppContext, run_id: int, steps: bool, fmt: str) -> None:
    """One training run: config, status, final metrics (and per-step metrics with --steps)."""
    from pipelines.train import get_run

    run = get_run(app.db(), run_id, with_steps=steps)
    if fmt == "table" and steps:
        step_rows = run.pop("steps")
        emit(run, fmt)
        emit(step_rows, fmt, title=f"run {run_id} steps")
        return
    emit(run, fmt)


@train_group.command("fields")
@click.argument("stage", type=click.Choice(["sft", "dpo"]))
@output_options
def fields(stage: str, fmt: str) -> None:
    """Every config field of a stage with its default and meaning."""
    from pipelines.train.launch import CONFIGS

    cls = CONFIGS[stage]
    defaults = cls().to_dict()
    emit([{"field": k, "default": defaults[k], "help": h} for k, h in cls.help_text().items()], fmt)


@click.group("navigators")
def navigators_group() -> None:
    """Trained navigator checkpoints, usable by name in sample/solve/serve/eval."""


@navigators_group.command("list")
@output_options
@pass_app
def navigators_list(app: AppContext, fmt: str) -> None:
    """Registered navigators and the runs that produced them."""
    from pipelines.train import list_navigators

    emit(list_navigators(app.db()), fmt, title="navigators")


def register(cli: click.Group) -> None:
    cli.add_command(train_group)
    cli.add_command(navigators_group)
