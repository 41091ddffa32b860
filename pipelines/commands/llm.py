"""`reasonflux llm`: the configured LLM roles."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.errors import InputError
from kb.output import emit, output_options
from pipelines.llm.cli_options import llm_config_option, role_option


@click.group("llm")
def llm() -> None:
    """The LLM roles configured by --llm-config files and role flags."""


@llm.command("check")
@llm_config_option("TOML or YAML file with roles (every role in it is checked).")
@role_option(
    "navigator",
    "Check this navigator spec (or registered navigator or model name).",
    dest="navigator",
    forms=False,
)
@role_option(
    "inference", "Check this inference spec (or registered model name).", dest="inference", forms=False
)
@role_option("miner", "Check this miner spec (or registered model name).", dest="miner", forms=False)
@click.option(
    "--max-tokens",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Tokens the probe may generate.",
)
@output_options(csv_ok=False)
@pass_app
def check_cmd(
    app: AppContext,
    llm_config: str | None,
    navigator: str | None,
    inference: str | None,
    miner: str | None,
    max_tokens: int,
    fmt: str,
) -> None:
    """Send one tiny request per configured role; report reachability, model and latency.

    Exits 5 if no role answered, 6 if some did not. Writes nothing to the KB (it reads it only to find a
    registered navigator's or model's folder).
    """
    from kb.runs import raise_for_outcome, verdict
    from pipelines.llm.check import check_role, roles_to_check
    from pipelines.llm.config import load_config

    roles = roles_to_check(
        load_config(llm_config), {"navigator": navigator, "inference": inference, "miner": miner}, app.db
    )
    if not roles:
        raise InputError("no role to check: give --llm-config FILE or --navigator/--inference/--miner SPEC")
    rows = [check_role(name, role, max_tokens=max_tokens) for name, role in roles.items()]
    emit(
        rows,
        fmt,
        columns=["role", "backend", "model", "ok", "latency_ms", "reply", "error"]
        if fmt == "table"
        else None,
    )
    failed = [r for r in rows if not r["ok"]]
    raise_for_outcome(
        {
            "stage": "llm check",
            "outcome": verdict(len(rows) - len(failed), len(failed)),
            "failed": len(failed),
            "total": len(rows),
            "units": "roles",
            "first_reasons": [f"{r['role']}: {r['error']}" for r in failed[:3]],
        }
    )


def register(cli: click.Group) -> None:
    cli.add_command(llm)
