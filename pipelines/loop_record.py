"""Reading a loop's record: the figures each step records about its plans (`plan_stats`, `reward_stats`) and the
per-iteration table of `reasonflux loop show` (`show`)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import NotFound
from pipelines.loop_config import ITERATION_STAGE, STAGE

# ---- figures -------------------------------------------------------------------------------------------

_PLANS_SQL = sa.text("""
    SELECT t.id, r.reward,
           p.extra->>'expected_template' AS expected,
           (SELECT bool_and(coalesce(v.name, s.template_phrase) = p.extra->>'expected_template')
            FROM trajectory_step s LEFT JOIN template_version v ON v.id = s.template_version_id
            WHERE s.trajectory_id = t.id) AS right_template
    FROM trajectory t JOIN problem p ON p.id = t.problem_id
    LEFT JOIN trajectory_reward r ON r.trajectory_id = t.id AND r.n_rollouts > 0
    WHERE t.navigator_model = :nav AND t.problem_id = ANY(:ids) AND t.sample_key = ANY(:keys)
""")


def plan_stats(db: Database, navigator_name: str, problem_ids: list[int], keys: list[str]) -> dict[str, Any]:
    """The plans NAVIGATOR_NAME produced for PROBLEM_IDS under sample KEYS: how many parsed (a plan that did
    not parse is not stored) and, over problems that record an expected template, how many use it in
    every step."""
    with db.engine.connect() as conn:
        rows = (
            conn.execute(_PLANS_SQL, {"nav": navigator_name, "ids": problem_ids, "keys": keys})
            .mappings()
            .all()
        )
    requested = len(problem_ids) * len(keys)
    judged = [r for r in rows if r["expected"] is not None]
    right = sum(1 for r in judged if r["right_template"])
    return {
        "plans_parsed": len(rows),
        "parse_rate": round(len(rows) / requested, 4) if requested else None,
        "plans_with_expected_template": len(judged),
        "right_template": right,
        "right_template_share": round(right / len(judged), 4) if judged else None,
    }


def reward_stats(
    db: Database, navigator_name: str, problem_ids: list[int], keys: list[str]
) -> dict[str, Any]:
    """Mean and spread (population standard deviation) of the rewards of those plans."""
    with db.engine.connect() as conn:
        rewards = [
            float(r["reward"])
            for r in conn.execute(
                _PLANS_SQL, {"nav": navigator_name, "ids": problem_ids, "keys": keys}
            ).mappings()
            if r["reward"] is not None
        ]
    if not rewards:
        return {"rewarded": 0, "reward_mean": None, "reward_std": None}
    mean = sum(rewards) / len(rewards)
    std = (sum((x - mean) ** 2 for x in rewards) / len(rewards)) ** 0.5
    return {"rewarded": len(rewards), "reward_mean": round(mean, 4), "reward_std": round(std, 4)}


# ---- reading -------------------------------------------------------------------------------------------


def latest_loop(db: Database) -> str:
    with db.engine.connect() as conn:
        name = conn.execute(
            sa.text("SELECT params->>'loop' FROM pipeline_run WHERE stage = :s ORDER BY id DESC LIMIT 1"),
            {"s": STAGE},
        ).scalar()
    if name is None:
        raise NotFound("no loop has run yet; start one with `reasonflux loop --config loop.yaml`")
    return name


def show(db: Database, loop: str | None = None) -> dict[str, Any]:
    """Per iteration: plans sampled, parse rate, rewards, pairs, DPO reward accuracy and margin, held-out
    figures; from the iterations' records (the steps not finished yet are empty)."""
    name = loop or latest_loop(db)
    with db.engine.connect() as conn:
        runs = (
            conn.execute(
                sa.text(
                    "SELECT id, status, params, counts FROM pipeline_run WHERE stage = :s AND params->>'loop' = :n "
                    "ORDER BY id"
                ),
                {"s": ITERATION_STAGE, "n": name},
            )
            .mappings()
            .all()
        )
        invocations = (
            conn.execute(
                sa.text(
                    "SELECT id, status, started_at, finished_at, error FROM pipeline_run WHERE stage = :s "
                    "AND params->>'loop' = :n ORDER BY id"
                ),
                {"s": STAGE, "n": name},
            )
            .mappings()
            .all()
        )
    if not invocations:
        raise NotFound(f"no loop named {name!r}; list loops with `reasonflux runs list --stage loop`")
    merged: dict[int, dict[str, Any]] = {}
    for r in runs:
        k = int(r["params"]["iteration"])
        entry = merged.setdefault(k, {"steps": {}, "runs": []})
        entry["steps"].update((r["counts"] or {}).get("steps") or {})
        entry["runs"].append(r["id"])
        entry["status"] = r["status"]
    rows = [_row(k, e) for k, e in sorted(merged.items())]
    return {"loop": name, "runs": [dict(i) for i in invocations], "iterations": rows}


def _row(k: int, entry: dict[str, Any]) -> dict[str, Any]:
    s = entry["steps"]
    sample, rewards, pairs = s.get("sample", {}), s.get("rewards", {}), s.get("pairs", {})
    train, held = s.get("train", {}), s.get("heldout", {})
    nav = s.get("navigator", {})
    final = bool(nav.get("final")) and "sample" not in s
    return {
        "iteration": k,
        "navigator": nav.get("name"),
        "final": final,
        "plans": _ratio(sample.get("plans_parsed"), sample.get("plans_requested")),
        "plans_requested": sample.get("plans_requested"),
        "plans_parsed": sample.get("plans_parsed"),
        "parse_rate": sample.get("parse_rate"),
        "right_template": sample.get("right_template_share"),
        "reward_mean": rewards.get("reward_mean"),
        "reward_std": rewards.get("reward_std"),
        "pairs": pairs.get("pairs"),
        "dpo_accuracy": train.get("rewards/accuracies"),
        "dpo_margin": train.get("rewards/margins"),
        "trained": train.get("navigator"),
        "training_run": train.get("training_run"),
        "dataset": s.get("export", {}).get("dataset"),
        "heldout_plans": _ratio(held.get("plans_parsed"), held.get("plans_requested")),
        "heldout_requested": held.get("plans_requested"),
        "heldout_parsed": held.get("plans_parsed"),
        "heldout_parse_rate": held.get("parse_rate"),
        "heldout_right_template": held.get("right_template_share"),
        "heldout_judged": held.get("plans_with_expected_template"),
        # A loop continued past its old end turns the old final row into an ordinary iteration.
        "seconds": {
            name: step["seconds"] for name, step in s.items() if isinstance(step, dict) and "seconds" in step
        },
        "status": "converged (no pairs): the loop ended"
        if pairs.get("converged")
        else "done"
        if "train" in s
        else "final"
        if final and "heldout" in s
        else f"{entry.get('status')} (steps done: {', '.join(s) or 'none'})",
        "runs": entry["runs"],
    }


def _ratio(a: Any, b: Any) -> str | None:
    return f"{a}/{b}" if a is not None and b is not None else None
