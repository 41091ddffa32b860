"""The LLM stages of `reasonflux demo`: mine, sample and evaluate on a few problems with the tiny model.

The tiny model is random, so what it writes is garbage: the point is that every stage runs for real
(transformers backend, call log, runner, parsers, grader) and stores what it should: failures with the
raw output where a parse fails, rollouts graded wrong where there is nothing to grade. So that evaluate
has something to roll out even when no sampled plan parsed, one hand-written trajectory per problem is
added (navigator 'demo-fallback').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from pipelines import navigator
from pipelines.evaluate import evaluate
from pipelines.llm.base import SamplingParams
from pipelines.llm.config import RoleConfig
from pipelines.mine import mine
from pipelines.sample import sample
from pipelines.trajectories_store import insert_trajectory

FALLBACK_NAVIGATOR = "demo-fallback"


def _stored(db: Database, run_id: int) -> dict[str, Any]:
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("""
            SELECT (SELECT count(*) FROM llm_call WHERE run_id = :r) AS llm_calls,
                   (SELECT count(*) FROM failure WHERE run_id = :r) AS failures,
                   (SELECT count(*) FROM template_version WHERE run_id = :r) AS template_versions,
                   (SELECT count(*) FROM trajectory WHERE run_id = :r) AS trajectories,
                   (SELECT count(*) FROM rollout WHERE run_id = :r) AS rollouts,
                   (SELECT count(*) FILTER (WHERE correct) FROM rollout WHERE run_id = :r) AS rollouts_correct,
                   (SELECT left(reason, 120) FROM failure WHERE run_id = :r ORDER BY id LIMIT 1) AS first_failure
        """),
                {"r": run_id},
            )
            .mappings()
            .one()
        )
    return {"run_id": run_id, **dict(row)}


def run_llm_stages_demo(
    db: Database, model_dir: str | Path, problem_ids: list[int], *, n_samples: int = 2, max_tokens: int = 48
) -> dict[str, Any]:
    """Run mine, sample and evaluate on PROBLEM_IDS with the model in MODEL_DIR; what each stage stored."""
    role = RoleConfig("transformers", {"model_path": str(model_dir)})
    selection = "ids=" + ",".join(str(i) for i in problem_ids)
    short = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    mined = mine(db, selection, role, max_retries=1, sampling=short, progress=False)
    sampled = sample(
        db,
        selection,
        role,
        n=n_samples,
        navigator_name="tiny-navigator",
        sampling=SamplingParams(temperature=0.8, max_tokens=max_tokens),
        progress=False,
    )
    with db.engine.begin() as conn:
        for pid in problem_ids:
            insert_trajectory(
                conn,
                pid,
                [
                    ("Restate the problem in general terms", None, None),
                    ("Apply the matching method and compute the answer", None, None),
                ],
                FALLBACK_NAVIGATOR,
                "demo",
                abstraction="demo plan",
                raw_output="",
                sampling={**navigator.recorded(), "written_by": "demo"},
            )
    traj_sel = "problem=" + ",".join(str(i) for i in problem_ids)
    evaluated = evaluate(db, traj_sel, role, sampling=short, progress=False)
    return {
        "mine": {**_stored(db, mined["run_id"]), "units_failed": mined["units_failed"]},
        "sample": {**_stored(db, sampled["run_id"]), "units_failed": sampled["units_failed"]},
        "evaluate": {
            **_stored(db, evaluated["run_id"]),
            "evaluated_on_anchor_only": evaluated.get("evaluated_on_anchor_only", 0),
        },
    }
