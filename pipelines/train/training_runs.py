"""A training run's record: its `training_run` row's columns, per-step metrics, listing, resume.

The row starts and finishes through kb.runs (open_run/close_run, the one run record, shared with pipeline
runs), as does its lifecycle (owner, heartbeat, SIGTERM, orphans). The process that starts a run owns its
row; the training process (rank 0 only) writes per-step metrics through `MetricsCallback`, so metrics land
in the KB even from `accelerate launch` workers. Navigators by name: pipelines.train.navigators.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlmodel import select

from kb import runs
from kb.db import Database
from kb.errors import ConflictError, InputError, NotFound
from kb.models import NavigatorModel, TrainingMetric, TrainingRun
from kb.secrets import scrub

# The metrics a run keeps as its final summary: the last logged value of each.
RUN_SUMMARY_KEYS = ("train_tokens_per_second", "peak_gpu_memory_gib", "peak_rss_gib")
FINAL_KEYS = (
    "loss",
    "train_loss",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
    "mean_token_accuracy",
    "train_runtime",
    "train_samples_per_second",
    "epoch",
    *RUN_SUMMARY_KEYS,
)


# -- runs ---------------------------------------------------------------------------------------------
# The lifecycle (owner, heartbeat, SIGTERM, interrupted/failed/succeeded, orphans) is kb.runs's, shared
# with pipeline runs; what is training's own is the row's columns and its final metrics.


def start_run(
    db: Database,
    *,
    stage: str,
    base_model: str,
    dataset_version_id: str | None,
    config: dict[str, Any],
    output_path: str | None = None,
    resumed_from: int | None = None,
) -> int:
    try:
        return runs.open_run(
            db,
            "training",
            stage=stage,
            base_model=base_model,
            dataset_version_id=dataset_version_id,
            config=config,
            output_path=output_path,
            resumed_from=resumed_from,
        )
    except sa.exc.IntegrityError as e:
        if resumed_from is not None and "ux_training_run_resumed_from" in str(e):
            raise ConflictError(
                f"run {resumed_from} has just been resumed by another command; see `reasonflux train runs`"
            ) from None
        raise


def set_output_path(db: Database, run_id: int, output_path: str, config: dict[str, Any]) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(output_path=output_path, config=scrub(config))
        )


def finish_run(
    db: Database,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Close the row with its status and final metrics (last logged values, plus `extra_metrics`)."""
    metrics = {**final_metrics(db, run_id), **_finite(extra_metrics or {})}
    runs.close_run(db, "training", run_id, status, error=error, metrics=metrics)
    return metrics


@contextlib.contextmanager
def recorded_run(db: Database, run_id: int) -> Iterator[dict[str, Any]]:
    """Yields a dict for extra final metrics; ends the run succeeded, failed or interrupted (Ctrl-C, SIGTERM)."""
    extra: dict[str, Any] = {}
    with runs.owned(
        db,
        "training",
        run_id,
        lambda status, error: finish_run(db, run_id, status, error=error, extra_metrics=extra),
    ):
        yield extra


# -- metrics ------------------------------------------------------------------------------------------


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers only; NaN/inf become strings so they stay visible yet valid JSON."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = value if math.isfinite(value) else str(value)
    return out


def record_metrics(db: Database, run_id: int, step: int, metrics: dict[str, Any]) -> None:
    """Upsert one step's metrics; a second log at the same step (the end-of-training summary) merges in."""
    values = _finite(metrics)
    if not values:
        return
    stmt = pg_insert(TrainingMetric).values(run_id=run_id, step=step, metrics=values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "step"],
        set_={"metrics": TrainingMetric.__table__.c.metrics.op("||")(stmt.excluded.metrics)},
    )
    with db.engine.begin() as conn:
        conn.execute(stmt)


def final_metrics(db: Database, run_id: int) -> dict[str, Any]:
    """The last logged value of each FINAL_KEYS metric, and the last step."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT e.key, (array_agg(e.value ORDER BY m.step DESC))[1] AS value "
                "FROM training_metric m, jsonb_each(m.metrics) e "
                "WHERE m.run_id = :r AND e.key = ANY(:keys) GROUP BY e.key"
            ),
            {"r": run_id, "keys": list(FINAL_KEYS)},
        ).all()
        last_step = conn.execute(
            sa.select(sa.func.max(TrainingMetric.step)).where(TrainingMetric.run_id == run_id)
        ).scalar()
    out = {key: value for key, value in rows}
    if last_step is not None:
        out["global_step"] = last_step
    return out


def metrics_callback(db: Database, run_id: int):
    """A transformers TrainerCallback writing every log (loss, DPO rewards...) to training_metric."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record_metrics(db, run_id, int(state.global_step), logs)

    return MetricsCallback()


# -- listing and resume -------------------------------------------------------------------------------

RUN_COLUMNS = (
    "id",
    "stage",
    "status",
    "base_model",
    "dataset_version_id",
    "resumed_from",
    "output_path",
    "started_at",
    "finished_at",
    "host",
)


def list_runs(
    db: Database, *, stage: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    query = sa.select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
    if stage:
        query = query.where(TrainingRun.stage == stage)
    if status:
        query = query.where(TrainingRun.status == status)
    with db.session() as s:
        runs = s.exec(query).scalars().all()
    return [
        {
            **{c: getattr(r, c) for c in RUN_COLUMNS},
            "loss": (r.metrics or {}).get("loss"),
            "reward_accuracy": (r.metrics or {}).get("rewards/accuracies"),
        }
        for r in runs
    ]


def get_run(db: Database, run_id: int, *, with_steps: bool = True) -> dict[str, Any]:
    with db.session() as s:
        run = s.get(TrainingRun, run_id)
        if run is None:
            raise NotFound(f"no training run {run_id}; list them with `reasonflux train runs`")
        dumped = run.model_dump()
        order = (*RUN_COLUMNS, "pid", "heartbeat_at", "code_version", "error", "metrics", "config")
        out = {k: dumped[k] for k in order}
        if with_steps:
            steps = s.exec(
                select(TrainingMetric).where(TrainingMetric.run_id == run_id).order_by(TrainingMetric.step)
            ).all()
            out["steps"] = [{"step": m.step, **m.metrics} for m in steps]
        navigator = s.exec(
            select(NavigatorModel.name).where(NavigatorModel.training_run_id == run_id)
        ).first()
        out["navigator"] = navigator
    return out


def last_checkpoint(output_dir: str | None) -> str | None:
    if not output_dir or not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir)


def resumable(db: Database, run_id: int, stage: str) -> tuple[TrainingRun, str]:
    """The run to resume and its last checkpoint, or a clear error why it cannot be resumed.

    A run whose owner is gone is first marked interrupted (kb.runs), so a killed run can be resumed;
    a run is resumed at most once, since every resume writes into the run's own folder."""
    runs.mark_orphaned_runs(db)
    with db.session() as s:
        run = s.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id}; list them with `reasonflux train runs`")
    if run.stage != stage:
        raise InputError(
            f"run {run_id} is a {run.stage} run; resume it with `reasonflux train {run.stage}`",
            field="resume",
        )
    if run.status == "succeeded":
        raise InputError(f"run {run_id} succeeded; there is nothing to resume", field="resume")
    if run.status == "running":
        raise ConflictError(
            f"run {run_id} is still running (its owner {run.host}:{run.pid} renews its lease); "
            "resuming it would make two trainers share one folder. If that process is gone, "
            f"it is marked interrupted within {runs.LEASE_S:.0f} s of its last heartbeat"
        )
    with db.session() as s:
        later = s.exec(select(TrainingRun).where(TrainingRun.resumed_from == run_id)).first()
    if later is not None:
        advice = (
            f"resume run {later.id} instead"
            if later.status in ("failed", "interrupted")
            else f"run {later.id} is {later.status}"
        )
        raise ConflictError(
            f"run {run_id} was already resumed by run {later.id} into the same folder "
            f"({run.output_path}); a second resume would overwrite its checkpoints: {advice}"
        )
    checkpoint = last_checkpoint(run.output_path)
    if checkpoint is None:
        raise InputError(
            f"run {run_id} left no checkpoint in {run.output_path}; start a new run instead", field="resume"
        )
    return run, checkpoint
