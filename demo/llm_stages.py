"""Template mining in `reasonflux demo`, with the tiny model.

The tiny model is random, so what it writes is garbage: the point is that the stage runs for real
(transformers backend, call log, runner, parser) and stores what it should: failures with the raw output
where a parse fails. Sampling, rollouts, pairs, exports and training are the loop's (`pipelines.loop`),
which the demo runs on the toy world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from pipelines.llm.base import SamplingParams
from pipelines.llm.config import RoleConfig
from pipelines.mine import mine


def _stored(db: Database, run_id: int) -> dict[str, Any]:
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("""
            SELECT (SELECT count(*) FROM llm_call WHERE run_id = :r) AS llm_calls,
                   (SELECT count(*) FROM failure WHERE run_id = :r) AS failures,
                   (SELECT count(*) FROM template_version WHERE run_id = :r) AS template_versions,
                   (SELECT left(reason, 120) FROM failure WHERE run_id = :r ORDER BY id LIMIT 1) AS first_failure
        """),
                {"r": run_id},
            )
            .mappings()
            .one()
        )
    return {"run_id": run_id, **dict(row)}


def run_mining_demo(
    db: Database, model_dir: str | Path, problem_ids: list[int], *, max_tokens: int = 48
) -> dict[str, Any]:
    """Mine templates from PROBLEM_IDS with the model in MODEL_DIR; what the stage stored."""
    role = RoleConfig("transformers", {"model_path": str(model_dir)})
    selection = "ids=" + ",".join(str(i) for i in problem_ids)
    short = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    mined = mine(db, selection, role, max_retries=1, sampling=short, progress=False)
    return {**_stored(db, mined["run_id"]), "units_failed": mined["units_failed"]}
