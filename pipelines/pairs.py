"""DPO pairs from stored rewards, in one set-based SQL statement.

For each train-split problem, trajectories evaluated on the same similar set with
at least `min_rollouts` rollouts are paired (better, worse) when their rewards
differ by at least `min_margin`; a problem keeps its `max_pairs_per_problem`
largest-margin pairs, ties broken by trajectory ids so the result is deterministic.
The parameters' hash identifies the selection: re-running is a no-op, and a
problem that already has pairs under these parameters is never topped up.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from kb import rewards
from kb.datasets import params_hash
from kb.db import Database
from kb.errors import InputError
from kb.runs import pipeline_run

REWARD_DEFINITION = "mean-correct-over-similar-set/v1"
# Rewards are ratios of small integers; a margin equal to min_margin must not fail on rounding.
EPSILON = 1e-9

PAIRS_SQL = """
WITH eligible AS (
    SELECT trajectory_id, problem_id, similar_set_id, reward
    FROM trajectory_reward
    WHERE split = 'train' AND reward IS NOT NULL AND n_rollouts >= :min_rollouts
      AND (CAST(:build AS int) IS NULL OR similar_build_id = :build)
      AND (CAST(:navigator AS text) IS NULL OR navigator_model = :navigator)
      AND NOT EXISTS (SELECT 1 FROM dpo_pair d WHERE d.params_hash = :hash AND d.problem_id = trajectory_reward.problem_id)
), ranked AS (
    SELECT a.problem_id, a.trajectory_id AS chosen, b.trajectory_id AS rejected,
           a.reward AS chosen_reward, b.reward AS rejected_reward, a.reward - b.reward AS margin,
           row_number() OVER (PARTITION BY a.problem_id
                              ORDER BY a.reward - b.reward DESC, a.trajectory_id, b.trajectory_id) AS rn
    FROM eligible a
    JOIN eligible b ON b.problem_id = a.problem_id AND b.similar_set_id IS NOT DISTINCT FROM a.similar_set_id
                   AND a.reward > b.reward AND a.reward - b.reward >= :min_margin - :eps
)
INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, chosen_reward, rejected_reward,
                      margin, params, params_hash, run_id)
SELECT problem_id, chosen, rejected, chosen_reward, rejected_reward, margin, CAST(:params AS jsonb), :hash, :run_id
FROM ranked WHERE rn <= :max_pairs
ORDER BY problem_id, rn
ON CONFLICT (params_hash, chosen_trajectory_id, rejected_trajectory_id) DO NOTHING
"""


def pair_params(
    *,
    min_margin: float = 0.2,
    min_rollouts: int = 4,
    max_pairs_per_problem: int = 4,
    similar_build: int | None = None,
    navigator_model: str | None = None,
) -> dict[str, Any]:
    if not 0 < min_margin <= 1:
        raise InputError("must be in (0, 1]", field="--min-margin")
    if min_rollouts < 1:
        raise InputError("must be at least 1", field="--min-rollouts")
    if max_pairs_per_problem < 1:
        raise InputError("must be at least 1", field="--max-pairs-per-problem")
    return {
        "reward": REWARD_DEFINITION,
        "split": "train",
        "min_margin": float(min_margin),
        "min_rollouts": int(min_rollouts),
        "max_pairs_per_problem": int(max_pairs_per_problem),
        "similar_build": similar_build,
        "navigator_model": navigator_model,
    }


def insert_pairs(conn, params: dict[str, Any], run_id: int | None) -> int:
    """The one statement; returns the number of new pairs."""
    return conn.execute(
        sa.text(PAIRS_SQL),
        {
            "min_rollouts": params["min_rollouts"],
            "build": params["similar_build"],
            "navigator": params["navigator_model"],
            "min_margin": params["min_margin"],
            "eps": EPSILON,
            "max_pairs": params["max_pairs_per_problem"],
            "hash": params_hash(params),
            "run_id": run_id,
            "params": json.dumps(params, sort_keys=True),
        },
    ).rowcount


def build_pairs(db: Database, *, refresh: bool = True, **options: Any) -> dict[str, Any]:
    """Refresh rewards (unless told not to) and insert the pairs these parameters select."""
    params = pair_params(**options)
    phash = params_hash(params)
    with pipeline_run(db, "pairs", params) as (run_id, counts):
        if refresh:
            counts["rewards"] = rewards.refresh_rewards(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
            created = insert_pairs(conn, params, run_id)
            total = conn.execute(
                sa.text("SELECT count(*) FROM dpo_pair WHERE params_hash = :h"), {"h": phash}
            ).scalar()
        counts.update(created=created, total=total, params_hash=phash)
    return {"run_id": run_id, "params_hash": phash, "created": created, "total": total, "params": params}


def list_pair_sets(db: Database) -> list[dict[str, Any]]:
    """One row per params_hash: how many pairs, over how many problems, and the parameters."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT params_hash, count(*) AS pairs, count(DISTINCT problem_id) AS problems, "
                "round(avg(margin)::numeric, 4) AS mean_margin, min(params::text) AS params, max(run_id) AS last_run "
                "FROM dpo_pair GROUP BY params_hash ORDER BY max(id)"
            )
        ).mappings()
        return [{**dict(r), "params": json.loads(r["params"])} for r in rows]


def show_pairs(
    db: Database, *, params_hash_: str | None = None, problem_id: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, problem_id, chosen_trajectory_id, rejected_trajectory_id, chosen_reward, rejected_reward, "
                "margin, params_hash, run_id FROM dpo_pair "
                "WHERE (CAST(:h AS text) IS NULL OR params_hash LIKE :h || '%') "
                "AND (CAST(:p AS int) IS NULL OR problem_id = :p) ORDER BY id LIMIT :limit"
            ),
            {"h": params_hash_, "p": problem_id, "limit": limit},
        ).mappings()
        return [dict(r) for r in rows]
