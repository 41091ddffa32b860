"""`reasonflux export`: write immutable, verifiable dataset versions (Parquet, optional JSONL or the
LLaMA-Factory copy), laid out as a Hub dataset repo, optionally pushed to the Hub."""

from __future__ import annotations

import functools

import click

from kb.cli import AppContext, pass_app
from kb.errors import KbError
from kb.output import emit

SUMMARY = ("id", "kind", "path", "row_counts", "schema_revision", "created_at")


def _common(f, formats=("parquet", "jsonl")):
    f = click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")(f)
    f = click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")(f)
    f = click.option(
        "--push-to-hub",
        "push_repo",
        metavar="REPO",
        default=None,
        help="Then upload the folder to this Hub dataset repo (needs a token: `hf auth login`).",
    )(f)
    f = click.option(
        "--license",
        "license_id",
        default=None,
        metavar="ID",
        help="Licence id for the card and the record (e.g. apache-2.0, cc-by-4.0, mit, other). "
        "Default: the licence recorded for every source of the data (`problems import --license`, "
        "`import ... --license`); `unknown` when none is recorded; when the sources differ or only "
        "some have one, the export is refused (exit 2) until --license says which.",
    )(f)
    f = click.option(
        "--jsonl", "with_jsonl", is_flag=True, help="Also write JSONL next to the Parquet files."
    )(f)
    f = click.option(
        "--format",
        "data_format",
        type=click.Choice(formats),
        default="parquet",
        show_default=True,
        help="Data file format (--jsonl adds JSONL to Parquet; llamafactory: "
        "Parquet plus LLaMA-Factory files and dataset_info.json).",
    )(f)
    f = click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Folder to create (must not exist, be empty, or hold this same version).",
    )(f)
    return f


def _run(
    app: AppContext,
    kind: str,
    out_dir: str,
    data_format: str,
    with_jsonl: bool,
    as_json: bool,
    license_id: str | None,
    push_repo: str | None,
    private: bool,
    **selection,
) -> None:
    from pipelines.export import export

    formats = (data_format,) if data_format != "parquet" else ("parquet",)
    if with_jsonl:
        if data_format == "jsonl":
            raise click.UsageError("--jsonl adds JSONL to Parquet; with --format jsonl it is already JSONL")
        formats = (*formats, "jsonl")
    if private and not push_repo:
        raise click.UsageError("--private goes with --push-to-hub")
    manifest = export(app.db(), kind, out_dir, formats=formats, license=license_id, **selection)
    summary = manifest if as_json else {k: manifest[k] for k in SUMMARY}
    if push_repo:
        from kb.dataset_hub import push_to_hub

        try:
            summary = {**summary, "hub": push_to_hub(out_dir, push_repo, private=private)}
        except KbError as e:
            raise KbError(
                f"{e} (the export itself is written and recorded: {manifest['id']} in {out_dir})"
            ) from None
    emit(summary, "json" if as_json else "table")


@click.group("export")
def export_group() -> None:
    """Dataset versions: dpo, sft, templates, problems (manifest.json + README.md card + data files)."""


def _contracts(f):
    return click.option(
        "--allow-mixed-contracts",
        is_flag=True,
        help="Export trajectories sampled under different navigator contract versions together.",
    )(f)


@export_group.command("dpo")
@functools.partial(_common, formats=("parquet", "jsonl", "llamafactory"))
@_contracts
@click.option(
    "--pairs",
    default=None,
    metavar="PARAMS_HASH",
    help="Which pair selection (hash or prefix; default: the most recently built).",
)
@click.option(
    "--min-margin", type=float, default=0.0, show_default=True, help="Keep pairs with at least this margin."
)
@pass_app
def dpo_cmd(
    app: AppContext,
    out_dir: str,
    data_format: str,
    with_jsonl: bool,
    as_json: bool,
    pairs: str | None,
    min_margin: float,
    allow_mixed_contracts: bool,
    **hub,
) -> None:
    """DPO pairs in TRL's conversational preference format (prompt / chosen / rejected).

    `prompt` is the navigator contract's plan request, `chosen`/`rejected` its JSON plan replies.
    `--format llamafactory` adds llamafactory/reasonflux_dpo.jsonl and dataset_info.json (sharegpt,
    ranking): `llamafactory-cli train --dataset_dir OUT --dataset reasonflux_dpo --stage dpo ...`.

    Example: reasonflux export dpo --out exports/dpo-v1 --min-margin 0.25
    """
    _run(
        app,
        "dpo",
        out_dir,
        data_format,
        with_jsonl,
        as_json,
        pairs=pairs,
        min_margin=min_margin,
        allow_mixed_contracts=allow_mixed_contracts,
        **hub,
    )


@export_group.command("sft")
@functools.partial(_common, formats=("parquet", "jsonl", "llamafactory"))
@_contracts
@click.option(
    "--no-plans", is_flag=True, help="Template rows only (the paper's stage 1 without plan examples)."
)
@click.option(
    "--no-templates",
    is_flag=True,
    help="Plan rows only (e.g. a small model that should learn the reply format first).",
)
@click.option(
    "--plan-min-reward",
    type=float,
    default=0.75,
    show_default=True,
    help="Plan examples: trajectories whose complete reward is at least this.",
)
@click.option(
    "--plans-per-problem",
    type=int,
    default=1,
    show_default=True,
    help="Plan examples: at most this many (the best) per train-split problem.",
)
@pass_app
def sft_cmd(
    app: AppContext,
    out_dir: str,
    data_format: str,
    with_jsonl: bool,
    as_json: bool,
    allow_mixed_contracts: bool,
    no_plans: bool,
    no_templates: bool,
    plan_min_reward: float,
    plans_per_problem: int,
    **hub,
) -> None:
    """Stage-1 SFT data (`messages`): template knowledge plus plan examples.

    Template rows: name + tags -> description + application scope. Plan rows: the navigator contract's
    plan request for a train-split problem -> the reply of its best-rewarded trajectory. The mix is
    recorded in the manifest's params. `--format llamafactory` adds llamafactory/reasonflux_sft.jsonl and
    dataset_info.json (sharegpt): `llamafactory-cli train --dataset_dir OUT --dataset reasonflux_sft --stage sft`.

    Example: reasonflux export sft --out exports/sft-v1 --plan-min-reward 1.0
    """
    if plans_per_problem < 1:
        raise click.BadParameter("must be at least 1", param_hint="--plans-per-problem")
    _run(
        app,
        "sft",
        out_dir,
        data_format,
        with_jsonl,
        as_json,
        templates=not no_templates,
        plans=not no_plans,
        plan_min_reward=plan_min_reward,
        plans_per_problem=plans_per_problem,
        allow_mixed_contracts=allow_mixed_contracts,
        **hub,
    )


@export_group.command("templates")
@_common
@pass_app
def templates_cmd(
    app: AppContext, out_dir: str, data_format: str, with_jsonl: bool, as_json: bool, **hub
) -> None:
    """Current version of every template (JSONL: the template interchange records)."""
    _run(app, "templates", out_dir, data_format, with_jsonl, as_json, **hub)


@export_group.command("problems")
@_common
@click.option(
    "--problems",
    default=None,
    metavar="SELECTION",
    help="Which problems, e.g. 'source=math500;split=test' (default: all).",
)
@pass_app
def problems_cmd(
    app: AppContext,
    out_dir: str,
    data_format: str,
    with_jsonl: bool,
    as_json: bool,
    problems: str | None,
    **hub,
) -> None:
    """Problems with solutions and answers."""
    _run(app, "problems", out_dir, data_format, with_jsonl, as_json, problems=problems, **hub)


def register(cli: click.Group) -> None:
    cli.add_command(export_group)
