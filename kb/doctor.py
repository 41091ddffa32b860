"""What derived data is stale or missing, and what fixes it: `reasonflux db doctor`.

Derived data is everything the KB computes from its own rows: vectors of template versions and
problems (per embedding model), the refreshed `trajectory_reward` view, and the bookkeeping of
pipeline runs. Each check is one set-based query; none writes anything.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import sqlalchemy as sa

from kb import config
from kb.template_vectors import held_models, missing_vectors


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is still running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _vector_findings(conn: sa.Connection) -> list[dict[str, Any]]:
    models = held_models(conn) or [config.embed_model_name()]
    out = [{"check": "template_vectors", "model": model, "count": n,
            "detail": f"{n} current template version(s) without a vector for this model",
            "fix": f"reasonflux embed --what templates --model {model}"}
           for model, n in missing_vectors(conn, models).items() if n]
    problem_models = conn.execute(sa.text("SELECT DISTINCT model FROM problem_embedding ORDER BY model")).scalars()
    for model in problem_models:
        n = conn.execute(sa.text(
            "SELECT count(*) FROM problem p WHERE NOT EXISTS "
            "(SELECT 1 FROM problem_embedding e WHERE e.problem_id = p.id AND e.model = :m)"), {"m": model}).scalar()
        if n:
            out.append({"check": "problem_vectors", "model": model, "count": n,
                        "detail": f"{n} problem(s) without a vector for this model",
                        "fix": f"reasonflux embed --what problems --model {model}"})
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
    return [{"check": "rewards_view", "count": n,
             "detail": f"trajectory_reward is out of date for {n} trajectorie(s) (rollouts or trajectories "
                       "changed since its last refresh; pairs built now would use old rewards)",
             "fix": "reasonflux rewards refresh"}]


def _run_findings(conn: sa.Connection) -> list[dict[str, Any]]:
    host = socket.gethostname()
    rows = conn.execute(sa.text(
        "SELECT id, stage, host, pid, started_at FROM pipeline_run WHERE status = 'running' ORDER BY id")).all()
    dead = [r for r in rows if r.host == host and r.pid is not None and not pid_alive(r.pid)]
    elsewhere = [r for r in rows if r.host != host]
    out = []
    if dead:
        ids = ", ".join(str(r.id) for r in dead)
        out.append({"check": "runs_left_running", "count": len(dead), "runs": [r.id for r in dead],
                    "detail": f"run(s) {ids} are marked running but their process on this host is gone",
                    "fix": "rerun the stage (finished units are kept; the runner reclaims the rest), then "
                           f"mark them: UPDATE pipeline_run SET status = 'interrupted', finished_at = now() "
                           f"WHERE id IN ({ids})"})
    if elsewhere:
        out.append({"check": "runs_on_other_hosts", "count": len(elsewhere), "runs": [r.id for r in elsewhere],
                    "detail": "run(s) marked running on other hosts; their processes cannot be checked from here",
                    "fix": f"check on {', '.join(sorted({str(r.host) for r in elsewhere}))}"})
    return out


def diagnose(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every stale or missing piece of derived data, each with a count and the command that fixes it."""
    with engine.connect() as conn:
        return _vector_findings(conn) + _reward_findings(conn) + _run_findings(conn)
