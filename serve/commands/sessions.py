"""`reasonflux sessions list | show ID`: stored solve sessions and their step-by-step traces."""

from __future__ import annotations

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options, terminal_safe


@click.group("sessions")
def sessions_group() -> None:
    """Solve sessions: every round of every solve, kept."""


@sessions_group.command("list")
@click.option(
    "--status", type=click.Choice(["running", "solved", "failed", "limit"]), help="Only this status."
)
@click.option("--problem", "problem_id", type=int, help="Only sessions of this KB problem.")
@click.option("--run", "run_id", type=int, help="Only sessions of this run (a solve or eval).")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@output_options
@pass_app
def list_cmd(
    app: AppContext, status: str | None, problem_id: int | None, run_id: int | None, limit: int, fmt: str
) -> None:
    """The newest sessions first."""
    from serve.traces import list_sessions

    emit(
        list_sessions(app.db(), limit=limit, status=status, problem_id=problem_id, run_id=run_id),
        fmt,
        columns=(
            "id",
            "status",
            "rounds",
            "final_answer",
            "correct",
            "tokens",
            "seconds",
            "problem_id",
            "started_at",
            "problem",
        ),
        title="solve sessions",
    )


@sessions_group.command("show")
@click.argument("session_id", type=int)
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, session_id: int, fmt: str) -> None:
    """A session as a readable trace: each round's template, result, verdict and what changed.

    --json gives everything stored: prompts, raw navigator output, pinned template versions, tokens.
    """
    from serve.traces import get_session, render_trace

    session = get_session(app.db(), session_id)
    if fmt == "table":
        click.echo(terminal_safe(render_trace(session)))
    else:
        emit(session, fmt)


def register(cli: click.Group) -> None:
    cli.add_command(sessions_group)
