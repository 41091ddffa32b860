"""Reward evaluation: the inference LLM follows each trajectory on the problems of its similar set.

Per trajectory unit: for every problem of the trajectory's similar set (the anchor alone when it has no
set, counted as `evaluated_on_anchor_only`) that has a reference answer, `samples` rollouts with seeds
base_seed + i. The final answer is extracted (last \\boxed{}, then fallbacks) and graded with
pipelines.grader; each rollout is stored (idempotent on trajectory, problem, sample index) and a reply
without a final answer is also recorded in `failure` with its raw text. Rewards are computed from the
rollouts in SQL (kb.rewards), refreshed at the end of the run.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import InputError
from kb.rewards import refresh_rewards
from pipelines.grader import GRADER_NAME, extract_answer, grade
from pipelines.llm.base import Backend, ChatRequest, SamplingParams
from pipelines.llm.calls import LoggedBackend
from pipelines.llm.config import RoleConfig, backend_for, describe_role
from pipelines.prompts import Prompts, format_steps
from pipelines.runner import Outcome, Unit, run_stage
from pipelines.selection import TRAJECTORY_KEYS, parse_selection, select_trajectory_ids
from pipelines.trajectories_store import insert_rollouts

STAGE = "evaluate"
DEFAULT_SAMPLING = SamplingParams(temperature=0.0, max_tokens=1024)

_TRAJECTORIES_SQL = sa.text("""
    SELECT t.id, t.problem_id, t.similar_set_id, t.abstraction,
           coalesce((SELECT json_agg(json_build_object('text', s.text, 'template_name', v.name,
                                                       'template_steps', v.steps) ORDER BY s.position)
                     FROM trajectory_step s LEFT JOIN template_version v ON v.id = s.template_version_id
                     WHERE s.trajectory_id = t.id), '[]') AS steps,
           coalesce((SELECT json_agg(json_build_object('id', p.id, 'text', p.text, 'answer', p.answer)
                                     ORDER BY m.rank)
                     FROM similar_set_member m JOIN problem p ON p.id = m.problem_id
                     WHERE m.set_id = t.similar_set_id),
                    (SELECT json_agg(json_build_object('id', p.id, 'text', p.text, 'answer', p.answer))
                     FROM problem p WHERE p.id = t.problem_id AND t.similar_set_id IS NULL),
                    '[]') AS targets
    FROM trajectory t WHERE t.id = ANY(:ids)
""")


class EvaluateHandler:
    stage = STAGE

    def __init__(
        self,
        db: Database,
        run_id: int,
        role: RoleConfig | Backend,
        *,
        samples: int = 1,
        sampling: SamplingParams = DEFAULT_SAMPLING,
        base_seed: int = 0,
        prompts_dir: str | None = None,
    ):
        self.db, self.run_id = db, run_id
        self.backend = LoggedBackend(backend_for(role), db, run_id, STAGE)
        self.samples, self.sampling, self.base_seed = samples, sampling, base_seed
        self.prompts = Prompts(prompts_dir)

    def process(self, units: list[Unit]) -> list[Outcome]:
        with self.db.engine.connect() as conn:
            trajs = {
                r["id"]: dict(r)
                for r in conn.execute(
                    _TRAJECTORIES_SQL, {"ids": [u.payload["trajectory_id"] for u in units]}
                ).mappings()
            }
        reqs, index = [], []
        for u in units:
            t = trajs.get(u.payload["trajectory_id"])
            if t is None:
                continue
            steps = format_steps(t["steps"])
            for target in t["targets"]:
                if not (target["answer"] or "").strip():
                    continue  # nothing to grade against
                messages = self.prompts.messages(
                    "inference", problem=target["text"], steps=steps, abstraction=t["abstraction"] or ""
                )
                for i in range(self.samples):
                    params = replace(self.sampling, seed=self.base_seed + i)
                    reqs.append(
                        ChatRequest(messages, params, tags={"unit": u.key, "problem": target["id"], "i": i})
                    )
                    index.append((u, t, target, i))
        comps = self.backend.generate(reqs) if reqs else []
        errors = [c.error for c in comps if c.error]
        if errors:  # the backend, not the trajectory: the runner retries the units (bounded)
            raise RuntimeError(f"LLM backend failed: {errors[0]}")
        rows: dict[int, list[dict[str, Any]]] = {u.id: [] for u in units}
        failures: dict[int, list[dict[str, Any]]] = {u.id: [] for u in units}
        for (u, t, target, i), c in zip(index, comps):
            extracted = extract_answer(c.text)
            if extracted is None:
                failures[u.id].append(
                    {
                        "reason": f"problem {target['id']} sample {i}: no final answer "
                        "(no \\boxed{} and no 'answer is' line)",
                        "raw_output": c.text,
                        "attempt": i,
                    }
                )
            rows[u.id].append(
                {
                    "trajectory_id": t["id"],
                    "problem_id": target["id"],
                    "sample_index": i,
                    "model": self.backend.model,
                    "output": c.text,
                    "extracted_answer": extracted,
                    "correct": grade(extracted, target["answer"]),
                    "grader": GRADER_NAME,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "latency_ms": c.latency_ms,
                }
            )
        outcomes = []
        for u in units:
            t = trajs.get(u.payload["trajectory_id"])
            if t is None:
                outcomes.append(
                    Outcome(status="failed", failures=[{"reason": "trajectory no longer exists"}])
                )
            elif not rows[u.id]:
                outcomes.append(
                    Outcome(
                        status="failed",
                        failures=[{"reason": "no problem with a reference answer to evaluate on"}],
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        data={"rows": rows[u.id], "anchor_only": t["similar_set_id"] is None},
                        failures=failures[u.id],
                    )
                )
        return outcomes

    def write(self, conn: sa.Connection, unit: Unit, outcome: Outcome, run_id: int) -> dict[str, int]:
        rows = [{**r, "run_id": run_id} for r in outcome.data["rows"]]
        written = insert_rollouts(conn, rows)
        return {
            "rollouts_written": written,
            "rollouts_correct": sum(1 for r in rows if r["correct"]),
            "rollouts_without_answer": sum(1 for r in rows if r["extracted_answer"] is None),
            "evaluated_on_anchor_only": int(outcome.data["anchor_only"]),
        }


def make_handler(db: Database, run_id: int, **options: Any) -> EvaluateHandler:
    return EvaluateHandler(db, run_id, **options)


def evaluate(
    db: Database,
    trajectories: str,
    role: RoleConfig | Backend,
    *,
    samples: int = 1,
    sampling: SamplingParams = DEFAULT_SAMPLING,
    base_seed: int = 0,
    prompts_dir: str | None = None,
    workers: int = 1,
    batch_size: int = 2,
    retry_failed: bool = False,
    lease_s: float | None = None,
    max_attempts: int | None = None,
    refresh: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Roll out the selected trajectories on their similar sets; returns the run's counts."""
    if samples < 1:
        raise InputError("must be at least 1", field="--samples")
    selection = parse_selection(trajectories, TRAJECTORY_KEYS, option="--trajectories")
    with db.engine.connect() as conn:
        ids = select_trajectory_ids(conn, selection)
    params = {
        "trajectories": selection.to_dict(),
        "llm": describe_role(role),
        "samples": samples,
        "sampling": sampling.to_dict(),
        "base_seed": base_seed,
        "grader": GRADER_NAME,
        "prompt_hash": Prompts(prompts_dir).hash("inference"),
    }
    factory = functools.partial(
        make_handler,
        role=role,
        samples=samples,
        sampling=sampling,
        base_seed=base_seed,
        prompts_dir=prompts_dir,
    )
    extra = {k: v for k, v in (("lease_s", lease_s), ("max_attempts", max_attempts)) if v is not None}
    counts = run_stage(
        db,
        stage=STAGE,
        params=params,
        units=[(f"trajectory:{i}", {"trajectory_id": i}) for i in ids],
        factory=factory,
        workers=workers,
        batch_size=batch_size,
        retry_failed=retry_failed,
        progress=progress,
        counters=(
            "rollouts_written",
            "rollouts_correct",
            "rollouts_without_answer",
            "evaluated_on_anchor_only",
        ),
        **extra,
    )
    if refresh and counts.get("rollouts_written"):
        counts["rewards"] = refresh_rewards(db)
    return counts
