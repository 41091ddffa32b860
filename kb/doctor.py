"""What derived data is stale or missing, and what fixes it: `reasonflux db doctor`.

Derived data is everything the KB computes from its own rows: vectors of template versions and
problems (per embedding model), the refreshed `trajectory_reward` view, and the bookkeeping of
pipeline runs. Each check is one set-based query; none writes anything.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb import config, runs
from kb.template_vectors import held_models, missing_vectors


def _vector_findings(conn: sa.Connection) -> list[dict[str, Any]]:
    models = held_models(conn) or [config.embed_model_name()]
    out = [
        {
            "check": "template_vectors",
            "model": model,
            "count": n,
            "detail": f"{n} current template version(s) without a vector for this model",
            "fix": f"reasonflux embed --what templates --model {model}",
        }
        for model, n in missing_vectors(conn, models).items()
        if n
    ]
    problem_models = conn.execute(
        sa.text("SELECT DISTINCT model FROM problem_embedding ORDER BY model")
    ).scalars()
    for model in problem_models:
        n = conn.execute(
            sa.text(
                "SELECT count(*) FROM problem p WHERE NOT EXISTS "
                "(SELECT 1 FROM problem_embedding e WHERE e.problem_id = p.id AND e.model = :m)"
            ),
            {"m": model},
        ).scalar()
        if n:
            out.append(
                {
                    "check": "problem_vectors",
                    "model": model,
                    "count": n,
                    "detail": f"{n} problem(s) without a vector for this model",
                    "fix": f"reasonflux embed --what problems --model {model}",
                }
            )
    return out


# The refreshed view against the live one: trajectories missing, gone, or with other counts.
_STALE_REWARDS = sa.text("""
    SELECT count(*) FROM trajectory_reward_live l
    FULL JOIN trajectory_reward m ON m.trajectory_id = l.trajectory_id
    WHERE l.trajectory_id IS NULL OR m.trajectory_id IS NULL
       OR (l.n_rollouts, l.n_correct, l.n_problems_evaluated, l.set_size)
          IS DISTINCT FROM (m.n_rollouts, m.n_correct, m.n_problems_evaluated, m.set_size)
""")


def _reward_findings(conn: sa.Connection) -> list[dict[str, Any]]:
    n = conn.execute(_STALE_REWARDS).scalar()
    if not n:
        return []
    return [
        {
            "check": "rewards_view",
            "count": n,
            "detail": f"trajectory_reward is out of date for {n} trajectorie(s) (rollouts or trajectories "
            "changed since its last refresh; pairs built now would use old rewards)",
            "fix": "reasonflux rewards refresh",
        }
    ]


def _run_findings(conn: sa.Connection) -> list[dict[str, Any]]:
    """Runs still `running` whose owner is gone (kb.runs: pid gone on this host, or lease run out on any).
    Every command that opens the KB marks them interrupted; `db` commands do not, so they can show them."""
    out = []
    for kind, rows in runs.orphaned_runs(conn).items():
        ids = ", ".join(str(r["id"]) for r in rows)
        out.append(
            {
                "check": "runs_left_running" if kind == "pipeline" else f"{kind}_runs_left_running",
                "count": len(rows),
                "runs": [r["id"] for r in rows],
                "detail": f"{kind} run(s) {ids} are marked running but their owner is gone: {rows[0]['reason']}",
                "fix": "any command that opens the KB marks them interrupted (e.g. `reasonflux runs list`); "
                "then rerun the stage"
                + (" or `reasonflux train ... --resume RUN_ID`" if kind == "training" else ""),
            }
        )
    return out


def diagnose(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every stale or missing piece of derived data, each with a count and the command that fixes it."""
    with engine.connect() as conn:
        return _vector_findings(conn) + _reward_findings(conn) + _run_findings(conn)
