"""add trajectory reward (materialised view, refreshed) and its live view

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A trajectory's reward: the mean correctness of its rollouts on the problems of its similar set
# (all its rollouts when it has no set), with the counts that show how complete the evaluation is.
# Rollouts are first reduced per (trajectory, problem) so the set-membership test runs on the
# reduced rows, not on every rollout.
REWARD_SQL = """
    WITH per_problem AS (
        SELECT r.trajectory_id, r.problem_id, count(*)::int AS n, (count(*) FILTER (WHERE r.correct))::int AS c
        FROM rollout r
        GROUP BY r.trajectory_id, r.problem_id
    ), evaluated AS (
        SELECT pp.trajectory_id, sum(pp.n) AS n, sum(pp.c) AS c, count(*)::int AS problems
        FROM per_problem pp
        JOIN trajectory t ON t.id = pp.trajectory_id
        LEFT JOIN similar_set_member m ON m.set_id = t.similar_set_id AND m.problem_id = pp.problem_id
        WHERE t.similar_set_id IS NULL OR m.set_id IS NOT NULL
        GROUP BY pp.trajectory_id
    )
    SELECT t.id AS trajectory_id, t.problem_id, t.similar_set_id, s.build_id AS similar_build_id,
           coalesce(s.anchor_split, p.split) AS split, t.navigator_model,
           s.size AS set_size,
           coalesce(e.n, 0)::int AS n_rollouts,
           coalesce(e.c, 0)::int AS n_correct,
           coalesce(e.problems, 0)::int AS n_problems_evaluated,
           (e.c::float8 / nullif(e.n, 0)) AS reward,
           CASE WHEN s.id IS NULL THEN coalesce(e.n, 0) > 0
                ELSE coalesce(e.problems, 0) >= s.size END AS complete
    FROM trajectory t
    JOIN problem p ON p.id = t.problem_id
    LEFT JOIN similar_set s ON s.id = t.similar_set_id
    LEFT JOIN evaluated e ON e.trajectory_id = t.id
"""


def upgrade() -> None:
    op.execute(f"CREATE MATERIALIZED VIEW trajectory_reward AS {REWARD_SQL} WITH DATA")
    op.execute("CREATE UNIQUE INDEX ix_trajectory_reward_trajectory ON trajectory_reward (trajectory_id)")
    op.execute("CREATE INDEX ix_trajectory_reward_problem ON trajectory_reward (problem_id, similar_set_id)")
    op.execute(f"CREATE VIEW trajectory_reward_live AS {REWARD_SQL}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS trajectory_reward_live")
    op.execute("DROP MATERIALIZED VIEW IF EXISTS trajectory_reward")
