"""`reasonflux eval`: the solver over a problem set, graded, compared with baselines, drawn."""

from __future__ import annotations

from typing import Any

import click

from kb.cli.context import AppContext, pass_app
from kb.output import emit, output_options
from kb.progress import progress_bar
from serve.commands.common import build_solver, pop_solver_kwargs, solver_options


@click.command("eval")
@click.option(
    "--problems",
    "selection",
    required=True,
    metavar="SELECTION",
    help="Which KB problems, e.g. 'source=math500;split=test' or 'source=math500;level=1-2;limit=50'.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 512),
    default=8,
    show_default=True,
    help="Sessions at once; their LLM calls are batched together.",
)
@click.option(
    "--best-of",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also run Best-of-N (majority vote over N samples) of the inference model.",
)
@click.option("--no-baseline", is_flag=True, help="Skip the single-call baseline.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for results.jsonl, summary.json, the CSV tables and scaling.png.",
)
@solver_options
@output_options
@pass_app
def eval_cmd(
    app: AppContext,
    selection: str,
    concurrency: int,
    best_of: int,
    no_baseline: bool,
    out_dir: str,
    fmt: str,
    **kwargs: Any,
) -> None:
    """Evaluate the solver: accuracy, rounds, templates and tokens per problem, by difficulty and subject,
    against a single call (and Best-of-N) of the same inference model, graded by the same grader.
    """
    from kb.runs import pipeline_run
    from serve.eval import load_problems, run_eval

    options = pop_solver_kwargs(kwargs)
    db = app.db()
    problems = load_problems(db, selection)
    params = {
        **options,
        "problems": selection,
        "count": len(problems),
        "concurrency": concurrency,
        "best_of": best_of,
        "baseline": not no_baseline,
        "out": out_dir,
    }
    with pipeline_run(db, "eval", params) as (run_id, counts):
        solver, _ = build_solver(db, options, run_id=run_id)
        with solver, progress_bar(len(problems), "solving") as advance:
            report = run_eval(
                db,
                solver,
                problems,
                out_dir=out_dir,
                concurrency=concurrency,
                best_of=best_of,
                baseline=not no_baseline,
                run_id=run_id,
                on_result=lambda _: advance(),
            )
        counts.update(problems=len(problems), accuracy=report.comparison[0]["accuracy"])
    if fmt == "table":
        emit(report.comparison, fmt, title=f"eval run {run_id}: {len(problems)} problems")
        emit(report.by_difficulty, fmt, title="by difficulty")
        emit(report.by_subject, fmt, title="by subject")
        click.echo(f"per-problem results, tables and the scaling figure: {out_dir}/", err=True)
    else:
        emit(
            {
                "run_id": run_id,
                "comparison": report.comparison,
                "by_difficulty": report.by_difficulty,
                "by_subject": report.by_subject,
                "files": report.files,
            },
            fmt,
        )


def register(cli: click.Group) -> None:
    cli.add_command(eval_cmd)
