"""Writing trajectories and rollouts: idempotent inserts for the sampling and evaluation stages.

A trajectory is identified by (problem, navigator model, sample key), a rollout by
(trajectory, problem, sample index): re-running a stage writes nothing twice, and
both kinds of row are immutable once written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from kb.errors import InputError
from kb.models import Rollout, Trajectory, TrajectoryStep

Step = tuple[str, int | None, float | None]
ROLLOUT_FIELDS = (
    "trajectory_id",
    "problem_id",
    "sample_index",
    "model",
    "output",
    "extracted_answer",
    "correct",
    "grader",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "run_id",
)

ROLLOUT_DEFAULTS = {
    "sample_index": 0,
    "model": "",
    "output": "",
    "extracted_answer": None,
    "grader": "math-verify",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "latency_ms": 0.0,
    "run_id": None,
}


TRAJECTORY_KEY = ("problem_id", "navigator_model", "sample_key")


def insert_trajectories(conn, rows: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Write ROWS (trajectory columns plus "steps", see insert_trajectory) in two statements: the one
    writer of trajectories, for the sample stage, the demo and tests. A (problem, navigator, sample_key)
    already stored is left as it is (trajectories are immutable). Returns {row index: new id} for the
    rows written."""
    if not rows:
        return {}
    values = [{k: v for k, v in row.items() if k != "steps"} for row in rows]
    steps = [[_step(i, s) for i, s in enumerate(row.get("steps") or [])] for row in rows]
    table = Trajectory.__table__
    stmt = (
        pg_insert(table)
        .values([{"sampling": {}, "raw_output": "", **v} for v in values])
        .on_conflict_do_nothing(index_elements=list(TRAJECTORY_KEY))
        .returning(table.c.id, *(table.c[k] for k in TRAJECTORY_KEY))
    )
    new = {tuple(key): tid for tid, *key in conn.execute(stmt).all()}
    written = {i: new[k] for i, v in enumerate(values) if (k := tuple(v[c] for c in TRAJECTORY_KEY)) in new}
    step_rows = [{"trajectory_id": tid, **r} for i, tid in written.items() for r in steps[i]]
    if step_rows:
        conn.execute(sa.insert(TrajectoryStep.__table__), step_rows)
    return written


def insert_trajectory(
    session,
    problem_id: int,
    steps: Sequence[Step | dict],
    navigator_model: str,
    sample_key: str,
    *,
    sampling: dict[str, Any] | None = None,
    raw_output: str = "",
    abstraction: str | None = None,
    run_id: int | None = None,
    similar_set_id: int | None = None,
    checkpoint: str | None = None,
) -> int:
    """The trajectory's id; written with its steps (through insert_trajectories) only if
    (problem, navigator, sample_key) is new.

    steps: (text, template_version_id or None, retrieval score or None) in order, or dicts with those keys
    (and optionally `template_phrase`, the template the plan named).
    """
    row = {
        "problem_id": problem_id,
        "navigator_model": navigator_model,
        "sample_key": sample_key,
        "sampling": sampling or {},
        "raw_output": raw_output,
        "abstraction": abstraction,
        "run_id": run_id,
        "similar_set_id": similar_set_id,
        "checkpoint": checkpoint,
        "steps": steps,
    }
    written = insert_trajectories(session, [row])
    if written:
        return written[0]
    return session.execute(
        sa.select(Trajectory.id).where(
            Trajectory.problem_id == problem_id,
            Trajectory.navigator_model == navigator_model,
            Trajectory.sample_key == sample_key,
        )
    ).scalar_one()


def _step(position: int, step: Step | dict) -> dict[str, Any]:
    phrase = None
    if isinstance(step, dict):
        text, version_id, score = (
            step.get("text"),
            step.get("template_version_id"),
            step.get("retrieval_score"),
        )
        phrase = step.get("template_phrase")
    else:
        text, version_id, score = (list(step) + [None, None])[:3]
    if not isinstance(text, str):
        raise InputError("step text must be a string", record=f"step {position}", field="text")
    return {
        "position": position,
        "text": text,
        "template_phrase": phrase,
        "template_version_id": version_id,
        "retrieval_score": score,
    }


def insert_rollouts(session, rows: Iterable[dict[str, Any]], *, chunk: int = 1000) -> int:
    """Insert rollouts (dicts with ROLLOUT_FIELDS; trajectory_id, problem_id, correct required);
    rows already stored for (trajectory_id, problem_id, sample_index) are skipped. Returns rows written."""
    written, batch = 0, []
    for row in rows:
        unknown = set(row) - set(ROLLOUT_FIELDS)
        if unknown:
            raise InputError(f"unknown rollout field(s) {', '.join(sorted(unknown))}", field=min(unknown))
        batch.append({**ROLLOUT_DEFAULTS, **row})
        if len(batch) >= chunk:
            written += _insert_rollout_batch(session, batch)
            batch = []
    if batch:
        written += _insert_rollout_batch(session, batch)
    return written


def _insert_rollout_batch(session, batch: list[dict]) -> int:
    stmt = (
        pg_insert(Rollout)
        .values(batch)
        .on_conflict_do_nothing(index_elements=["trajectory_id", "problem_id", "sample_index"])
        .returning(Rollout.id)
    )
    return len(session.execute(stmt).scalars().all())
