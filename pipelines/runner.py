"""The unit-claiming runner every LLM stage runs on: parallel, idempotent, resumable.

A stage's work is a set of units (one per problem or trajectory) in `work_unit`, keyed by
(stage, scope, unit_key), where scope hashes the stage's parameters: rerunning the same command finds the
same units and does only what is not done. Workers claim batches with `FOR UPDATE SKIP LOCKED`, so any
number of processes on any number of machines share the units of one PostgreSQL without overlap.

Crash safety: a unit's results, its failure rows and its `done` mark are written in ONE transaction,
guarded by the claim (`claimed_by` still ours), so a kill -9 at any moment leaves either everything or
nothing of a unit. A claim whose worker died is taken back when its lease expires, or at once when the
dead worker ran on this host (its pid is gone). Claims are counted: a unit that keeps killing its worker
or raising is marked failed after `max_attempts`, with the reasons in `failure`.

This module runs a stage (`run_stage`: the pipeline run, the worker processes, the outcome); one worker's
claim-process-store loop is `pipelines.stage_worker`, the queue's SQL `pipelines.work_queue`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from kb.db import Database, create_engine
from kb.errors import KbError
from kb.progress import progress_bar
from kb.runs import pipeline_run, verdict
from pipelines.stage_worker import HandlerFactory, Outcome, RunnerConfig, StageHandler, add_counts, work
from pipelines.work_queue import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    Unit,
    enqueue,
    release_dead_local_claims,
    reset_failed,
    unit_counts,
    unit_scope,
)

# What a stage module needs: run_stage, and the unit and outcome types its handler takes and returns.
__all__ = ["HandlerFactory", "Outcome", "StageHandler", "Unit", "run_stage"]

# ---------------------------------------------------------------- processes


def _share_cores(workers: int) -> None:
    """N processes each running torch on every core oversubscribe the machine: give each its share."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _worker_main(url: str, factory: HandlerFactory, cfg: RunnerConfig, results: Any, workers: int) -> None:
    _share_cores(workers)
    db = Database(url=url, embedded=False, engine=create_engine(url))
    try:
        results.put(work(db, factory(db, cfg.run_id), cfg))
    except Exception as e:  # noqa: BLE001 - reported by the parent, which fails the run with it
        results.put({"error": "".join(traceback.format_exception_only(type(e), e)).strip()})
    finally:
        db.dispose()


def _run_processes(
    db: Database,
    factory: HandlerFactory,
    cfg: RunnerConfig,
    workers: int,
    advance: Callable[[int], None],
    total: int,
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(db.url, factory, cfg, results, workers), daemon=False)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    collected: list[dict[str, Any]] = []
    finished_before = None
    while any(p.is_alive() for p in procs) or not results.empty():
        while not results.empty():
            collected.append(results.get())
        with db.engine.connect() as conn:
            c = unit_counts(conn, cfg.stage, cfg.scope)
        finished = c.get("done", 0) + c.get("failed", 0)
        if finished_before is not None and finished > finished_before:
            advance(finished - finished_before)
        finished_before = finished
        time.sleep(0.2)
    for p in procs:
        p.join()
    errors = [c["error"] for c in collected if "error" in c]
    if errors:
        raise KbError(f"{len(errors)} of {workers} worker processes failed: {errors[0]}")
    return collected


def run_stage(
    db: Database,
    *,
    stage: str,
    params: dict[str, Any],
    units: list[tuple[str, dict[str, Any]]],
    factory: HandlerFactory,
    workers: int = 1,
    batch_size: int = 4,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_failed: bool = False,
    progress: bool | None = None,
    run_params: dict[str, Any] | None = None,
    counters: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run a stage over UNITS (key, payload) as one pipeline run; returns the run's counts (with run_id).

    params: what defines the work (its hash is the units' scope: the same params resume the same units).
    factory(db, run_id) builds the handler in each worker; with workers > 1 it must be picklable
    (a module-level function or a functools.partial of one). counters: the handler's count keys, reported
    as 0 when nothing was done.
    """
    scope = unit_scope(stage, params)
    with pipeline_run(db, stage, {**params, **(run_params or {}), "workers": workers, "scope": scope}) as (
        run_id,
        counts,
    ):
        with db.engine.begin() as conn:
            counts["units_enqueued"] = enqueue(conn, stage, scope, units, run_id)
            if retry_failed:
                counts["units_reset"] = reset_failed(conn, stage, scope)
            counts["units_released"] = release_dead_local_claims(conn, stage, scope)
            before = unit_counts(conn, stage, scope)
        todo = before.get("pending", 0) + before.get("claimed", 0)
        cfg = RunnerConfig(
            stage=stage,
            scope=scope,
            run_id=run_id,
            batch_size=batch_size,
            lease_s=lease_s,
            max_attempts=max_attempts,
        )
        per_worker: list[dict[str, Any]] = []
        counts.update(
            units_done=0, units_failed=0, units_retried=0, units_lost=0, **dict.fromkeys(counters, 0)
        )
        with progress_bar(
            todo, f"{stage} ({workers} worker{'s' if workers > 1 else ''})", enabled=progress
        ) as advance:
            if todo and workers <= 1:
                per_worker.append(work(db, factory(db, run_id), cfg, advance))
            elif todo:
                per_worker = _run_processes(db, factory, cfg, workers, advance, todo)
        spans = [c.pop("span") for c in per_worker if "span" in c]
        if spans:  # first claim of any worker to last commit of any: the stage's working time
            counts["work_span_s"] = max(e for _, e in spans) - min(b for b, _ in spans)
        for c in per_worker:
            wall = c.pop("wall_s", 0.0)
            counts["work_wall_s"] = max(counts.get("work_wall_s", 0.0), wall)  # the slowest worker
            counts["worker_wall_s_total"] = counts.get("worker_wall_s_total", 0.0) + wall
            add_counts(counts, c)
        with db.engine.connect() as conn:
            after = unit_counts(conn, stage, scope)
            counts["failures_recorded"] = conn.execute(
                sa.text("SELECT count(*) FROM failure WHERE run_id = :r"), {"r": run_id}
            ).scalar_one()
        counts["units_total"] = sum(after.values())
        counts["units_status"] = after
        for k in ("db_s", "process_s", "work_wall_s", "worker_wall_s_total", "work_span_s"):
            if k in counts:
                counts[k] = round(counts[k], 4)
        outcome = _outcome(db, stage, scope, after)
        if outcome["outcome"] == "failed":  # nothing of the selection done, and units failed
            counts.status = "failed"
            counts.error = f"all {outcome['failed']} units failed; first reasons: " + "; ".join(
                outcome["first_reasons"]
            )
    return {"run_id": run_id, "stage": stage, **outcome, **counts}


def _outcome(db: Database, stage: str, scope: str, units_status: dict[str, int]) -> dict[str, Any]:
    """The selection's state after the run: succeeded, partial or failed, with the first failure reasons.

    Judged on every unit of the scope, not only this run's: rerunning a command whose units all failed
    before still says so (and --retry-failed tries them again)."""
    done, failed = units_status.get("done", 0), units_status.get("failed", 0)
    reasons: list[str] = []
    if failed:
        with db.engine.connect() as conn:
            reasons = (
                conn.execute(
                    sa.text(
                        "SELECT error FROM (SELECT error, min(id) AS first FROM work_unit WHERE stage = :s AND scope = :sc "
                        "AND status = 'failed' AND error IS NOT NULL GROUP BY error) e ORDER BY first LIMIT 3"
                    ),
                    {"s": stage, "sc": scope},
                )
                .scalars()
                .all()
            )
    return {
        "outcome": verdict(done, failed),
        "failed": failed,
        "total": sum(units_status.values()),
        "first_reasons": [r[:300] for r in reasons],
    }
