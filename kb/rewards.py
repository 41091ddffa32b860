"""Trajectory rewards, computed in SQL.

`trajectory_reward` is a materialised view (migration 0002): one row per trajectory
with n_rollouts, n_correct, n_problems_evaluated, set_size, complete and reward =
n_correct / n_rollouts over the rollouts on its similar set's problems. It is
recomputed by one REFRESH (a single GROUP BY over all rollouts, parallel where the
server allows), which at 10^7 rollouts is far cheaper than keeping it current on
every insert. `trajectory_reward_live` is the same query as a plain view, for
always-current reads of a few trajectories.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from kb.db import Database

REWARD_COLUMNS = (
    "trajectory_id",
    "problem_id",
    "similar_set_id",
    "similar_build_id",
    "split",
    "navigator_model",
    "set_size",
    "n_rollouts",
    "n_correct",
    "n_problems_evaluated",
    "reward",
    "complete",
)
# Enough memory for the sorts of the refresh to stay in memory at ~10^7 rollouts.
REFRESH_WORK_MEM = "256MB"


def refresh_rewards(db: Database) -> dict[str, Any]:
    """Recompute every trajectory's reward; returns counts and the time it took."""
    t0 = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL work_mem = '{REFRESH_WORK_MEM}'"))
        # Grouping rollouts by (trajectory, problem) in the order of the rollout's unique index streams
        # (measured ~2x faster than hashing ~10^6 groups, and it never spills at 10^7 rollouts).
        conn.execute(sa.text("SET LOCAL enable_hashagg = off"))
        conn.execute(sa.text("REFRESH MATERIALIZED VIEW trajectory_reward"))
        # Fresh statistics, so the pairs query that reads the view plans for its real size.
        conn.execute(sa.text("ANALYZE trajectory_reward"))
        row = (
            conn.execute(
                sa.text(
                    "SELECT count(*) AS trajectories, count(*) FILTER (WHERE n_rollouts > 0) AS evaluated, "
                    "count(*) FILTER (WHERE complete) AS complete, coalesce(sum(n_rollouts), 0) AS rollouts "
                    "FROM trajectory_reward"
                )
            )
            .mappings()
            .one()
        )
    return {**{k: int(v) for k, v in row.items()}, "seconds": round(time.perf_counter() - t0, 3)}


def rewards(
    db: Database,
    *,
    trajectory_id: int | None = None,
    problem_id: int | None = None,
    live: bool = False,
    limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Rewards from the refreshed view (or the live one), ordered by problem then trajectory."""
    view = "trajectory_reward_live" if live else "trajectory_reward"
    sql = (
        f"SELECT {', '.join(REWARD_COLUMNS)} FROM {view} "
        "WHERE (CAST(:t AS int) IS NULL OR trajectory_id = :t) AND (CAST(:p AS int) IS NULL OR problem_id = :p) "
        "ORDER BY problem_id, trajectory_id" + (" LIMIT :limit" if limit else "")
    )
    with db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(sql), {"t": trajectory_id, "p": problem_id, "limit": limit}
            ).mappings()
        ]
