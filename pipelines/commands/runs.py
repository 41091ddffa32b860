"""`reasonflux runs`: every pipeline run with its counts, failures and duration."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("runs")
def runs() -> None:
    """Pipeline runs: what ran, what it wrote, what failed, how long it took."""


@runs.command("list")
@click.option("--stage", default=None, help="Only this stage (mine, sample, evaluate, ...).")
@click.option("--status", default=None, help="Only this status (running, succeeded, failed, interrupted).")
@click.option("--limit", type=int, default=50, show_default=True)
@output_options
@pass_app
def list_cmd(app: AppContext, stage: str | None, status: str | None, limit: int, fmt: str) -> None:
    """The newest runs first."""
    from kb.run_listing import list_runs

    with app.db().engine.connect() as conn:
        rows = list_runs(conn, stage=stage, status=status, limit=limit)
    emit(
        rows,
        fmt,
        columns=[
            "id",
            "stage",
            "status",
            "started_at",
            "duration_s",
            "units_done",
            "units_failed",
            "failures",
            "llm_calls",
            "host",
        ]
        if fmt == "table"
        else None,
    )


@runs.command("show")
@click.argument("run_id", type=int)
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, run_id: int, fmt: str) -> None:
    """One run: parameters, counts, rows written per table, LLM calls, failures by reason, units."""
    from kb.run_listing import show_run

    with app.db().engine.connect() as conn:
        result = show_run(conn, run_id)
    if fmt == "table":
        failures = result.pop("failures_by_reason")
        emit(result, fmt)
        emit(failures, fmt, title="failures by reason")
    else:
        emit(result, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(runs)
