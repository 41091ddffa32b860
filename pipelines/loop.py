"""The ReasonFlux loop as one command: sample -> evaluate -> rewards -> pairs -> export dpo -> train dpo ->
register, iterated, each iteration sampling with the navigator the previous one trained.

A loop is identified by its name (`LoopConfig.name`). Every invocation is a `loop` pipeline run and every
iteration a `loop-iteration` run whose params name the loop and the iteration; the iteration's counts hold
one entry per finished step (its run ids and figures), written as soon as the step finishes. Running the
same loop again (after a kill at any point, or with more iterations) continues where it stopped:

- a step recorded as finished for that iteration is not run again;
- a step that was cut off is run again and finds its own work: sampling and evaluation are unit-claiming
  runs keyed by their parameters (`pipelines.runner`: what is done stays done), rewards are a refresh,
  pairs are keyed by their parameters' hash (never topped up), an export of the same pairs is the same
  dataset version (content-derived id), and the navigator an iteration trains has a fixed name
  (`<loop>-it<k>`): once registered it is reused; a training run that finished but was not registered yet
  is registered, and one that was interrupted with a checkpoint is resumed.

The navigator of iteration 0 is the configured one; iteration k > 0 samples with `<loop>-it<k-1>`. All
roles go through the one resolver (`pipelines.llm.roles`), so `scripted`, `transformers:`, `vllm:`,
`openai:` specs and registered navigator names work as in every other command. DPO trains on the
iteration's pairs, starting from (and with the reference model) the navigator that sampled them.

Optionally (`eval_problems`), each iteration's navigator, and the final one, plan for held-out problems:
the share of plans that parse and, where a problem records `extra.expected_template` (the controlled
world, `demo.toy_world`), the share whose every step uses that template.

The configuration is `pipelines.loop_config`, an iteration's steps `pipelines.loop_steps`, the figures and
`loop show`'s table `pipelines.loop_record`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import ConflictError, InputError
from kb.runs import exclusive, pipeline_run
from pipelines.loop_config import STAGE, LoopConfig, trained_name
from pipelines.loop_record import show
from pipelines.loop_steps import LoopSteps
from pipelines.selection import select_problem_ids

__all__ = ["LoopConfig", "run_loop", "show"]


# ---- running -------------------------------------------------------------------------------------------


def run_loop(db: Database, cfg: LoopConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Run (or continue) the loop to cfg.iterations; returns `show(db, cfg.name)`.

    One run per loop name at a time: a second refuses at start (ConflictError, exit 3) naming the first,
    instead of training the same iteration twice.
    """
    with exclusive(db, STAGE, "loop", cfg.name):
        return _run_loop(db, cfg, progress)


def _run_loop(db: Database, cfg: LoopConfig, progress: bool | None) -> dict[str, Any]:
    _check_continuation(db, cfg)
    with db.engine.connect() as conn:
        problem_ids = select_problem_ids(conn, cfg.problems)
        eval_ids = select_problem_ids(conn, cfg.eval_problems) if cfg.eval_problems else []
    if not problem_ids:
        raise InputError(f"selects no problem: {cfg.problems!r}", record="loop config", field="problems")
    if cfg.eval_problems and not eval_ids:
        raise InputError(
            f"selects no problem: {cfg.eval_problems!r}", record="loop config", field="eval_problems"
        )
    if set(problem_ids) & set(eval_ids):
        raise InputError(
            f"{len(set(problem_ids) & set(eval_ids))} held-out problems are also sampled for "
            "training; held-out problems must not be",
            record="loop config",
            field="eval_problems",
        )
    params = {"loop": cfg.name, "identity": cfg.identity(), "config": cfg.to_dict()}
    with pipeline_run(db, STAGE, params) as (run_id, counts):
        ctx = LoopSteps(db, cfg, run_id, problem_ids, eval_ids, progress)
        for k in range(cfg.iterations):
            pairs = ctx.iteration(k)["steps"]["pairs"]
            counts["iterations_done"] = k + 1
            if pairs.get("converged"):
                counts["converged"] = f"iteration {k}: {pairs['converged']}"
                counts["navigator"] = ctx.navigator_name(k)
                break
        else:
            if eval_ids:
                ctx.final(cfg.iterations)
            counts["navigator"] = trained_name(cfg, cfg.iterations - 1)
    return show(db, cfg.name)


def _check_continuation(db: Database, cfg: LoopConfig) -> None:
    with db.engine.connect() as conn:
        first = conn.execute(
            sa.text(
                "SELECT id, params FROM pipeline_run WHERE stage = :s AND params->>'loop' = :n ORDER BY id LIMIT 1"
            ),
            {"s": STAGE, "n": cfg.name},
        ).first()
    if first is None or first.params.get("identity") == cfg.identity():
        return
    before = first.params.get("config") or {}
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in cfg.RUNTIME and before.get(k) != v)
    raise ConflictError(
        f"loop {cfg.name!r} was started (run {first.id}) with other settings "
        f"({', '.join(f'{k}: {before.get(k)!r} -> {getattr(cfg, k)!r}' for k in changed)}); "
        "continue it with the same settings or start a loop with another name"
    )
