"""`reasonflux solve`: one problem (argument or file) or many (a KB selection), rounds shown live."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kb.cli.context import AppContext, pass_app
from kb.errors import InputError
from kb.output import emit, output_options
from kb.secrets import scrub
from serve.commands.common import build_solver, pop_solver_kwargs, solver_options

if TYPE_CHECKING:
    from serve.solve_events import SolveEvent

COLUMNS = (
    "session_id",
    "problem_id",
    "status",
    "answer",
    "correct",
    "rounds",
    "total_tokens",
    "seconds",
    "reason",
)


def _inputs(
    app: AppContext, problem: str | None, file: str | None, problems: str | None, reference: str | None
) -> list[dict[str, Any]]:
    from serve.eval import load_problems

    given = [x for x in (problem, file, problems) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one of PROBLEM, --file or --problems")
    if problems:
        if reference:
            raise click.UsageError(
                "--reference goes with one problem; selected problems use their stored answers"
            )
        return [
            {"id": p["id"], "text": p["text"], "answer": p["answer"]}
            for p in load_problems(app.db(), problems)
        ]
    if file:
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the problem: {e}", file=file) from None
        if not text.strip():
            raise InputError("the file is empty", file=file)
        return [{"id": None, "text": text.strip(), "answer": reference}]
    return [{"id": None, "text": problem, "answer": reference}]


@click.command("solve")
@click.argument("problem", required=False)
@click.option("--file", type=click.Path(exists=True, dir_okay=False), help="Read the problem from a file.")
@click.option(
    "--problems", metavar="SELECTION", help="Solve KB problems, e.g. 'source=math500;limit=5' or 'ids=1-3'."
)
@click.option("--reference", help="The known answer, to record whether the session got it right.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Sessions at once with --problems.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not show rounds as they happen.")
@solver_options
@output_options
@pass_app
def solve_cmd(
    app: AppContext,
    problem: str | None,
    file: str | None,
    problems: str | None,
    reference: str | None,
    concurrency: int,
    quiet: bool,
    fmt: str,
    **kwargs: Any,
) -> None:
    """Solve PROBLEM with the navigator and inference LLM against the live template KB.

    Each round (template retrieved, step result, the navigator's verdict and adjustments) is printed to
    stderr as it finishes; the result goes to stdout. Every session is stored: see `reasonflux sessions`.
    """
    from kb.runs import pipeline_run, raise_for_outcome
    from serve.traces.render import event_line

    options = pop_solver_kwargs(kwargs)
    items = _inputs(app, problem, file, problems, reference)
    db = app.db()
    lock = threading.Lock()

    def show(event: SolveEvent) -> None:
        line = scrub(event_line(event))
        if line and not quiet:
            with lock:
                click.echo(line, err=True)
                sys.stderr.flush()

    params = {k: v for k, v in options.items()} | {"problems": problems, "count": len(items)}
    with pipeline_run(db, "solve", params) as (run_id, counts):
        solver, _ = build_solver(db, options, run_id=run_id)
        with solver, ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
            results = list(
                pool.map(
                    lambda it: (
                        it,
                        solver.solve(it["text"], problem_id=it["id"], reference=it["answer"], on_event=show),
                    ),
                    items,
                )
            )
        records = [
            {"problem_id": it["id"], **r.to_dict(), "seconds": round(r.latency_ms / 1000, 2)}
            for it, r in results
        ]
        for rec in records:
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        outcome = _outcome(run_id, records)
        if outcome["outcome"] == "failed":
            counts.status, counts.error = (
                "failed",
                "every session failed: " + "; ".join(outcome["first_reasons"]),
            )
    if fmt == "table":
        emit(records, fmt, columns=COLUMNS, title="solve sessions")
    else:
        emit(records[0] if len(records) == 1 and not problems else records, fmt)
    raise_for_outcome(outcome)  # exit 5 if every session failed, 6 if some did


def _outcome(run_id: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    from kb.runs import verdict

    failed = [r for r in records if r["status"] == "failed"]
    return {
        "stage": "solve",
        "run_id": run_id,
        "outcome": verdict(len(records) - len(failed), len(failed)),
        "failed": len(failed),
        "total": len(records),
        "units": "sessions",
        "first_reasons": [f"session {r.get('session_id')}: {r.get('reason')}" for r in failed[:3]],
    }


def register(cli: click.Group) -> None:
    cli.add_command(solve_cmd)
