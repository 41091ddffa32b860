"""Trajectory sampling: the navigator abstracts each problem and plans N candidate trajectories.

Per problem unit: N requests of the navigator contract's plan (`pipelines.navigator.plan_messages`, with
`hint_k` retrieved templates as hints) at the navigator's temperature with seeds base_seed + i (recorded in
the trajectory's `sampling` and in its `sample_key`, which makes reruns idempotent). Each reply is parsed
with the contract's `parse_plan`; each step is linked to the template version that step retrieval
(`pipelines.step_retrieval`, the solver's) ranks first for it. `sampling` records the contract hash
(`prompt_hash`), the hints shown and `max_steps`, so exports rebuild the exact prompt. Unparseable plans
are recorded as failures with the raw output and are not retried: a different seed is a different sample.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import InputError
from pipelines import navigator, step_retrieval
from pipelines.llm.base import Backend, ChatRequest, SamplingParams
from pipelines.llm.calls import LoggedBackend
from pipelines.llm.config import RoleConfig, backend_for, describe_role
from pipelines.parsing import ParseError
from pipelines.runner import Outcome, Unit, run_stage
from pipelines.selection import PROBLEM_KEYS, parse_selection, select_problem_ids
from pipelines.trajectories_store import insert_trajectories

STAGE = "sample"
DEFAULT_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=768)


def sample_key(params: SamplingParams, seed: int) -> str:
    return f"T={params.temperature:g};top_p={params.top_p:g};seed={seed}"


class SampleHandler:
    stage = STAGE

    def __init__(
        self,
        db: Database,
        run_id: int,
        role: RoleConfig | Backend,
        *,
        n: int = 8,
        navigator_name: str | None = None,
        sampling: SamplingParams = DEFAULT_SAMPLING,
        base_seed: int = 0,
        hint_k: int = 3,
        retrieval_mode: str = "hybrid",
        max_steps: int = navigator.MAX_STEPS,
    ):
        self.db, self.run_id = db, run_id
        self.backend = LoggedBackend(backend_for(role), db, run_id, STAGE)
        self.navigator_name = navigator_name or self.backend.model
        self.n, self.sampling, self.base_seed = n, sampling, base_seed
        self.hint_k, self.retrieval_mode, self.max_steps = hint_k, retrieval_mode, max_steps
        self._has_templates = False

    def _problems(self, units: list[Unit]) -> dict[int, dict[str, Any]]:
        with self.db.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.text("""
                SELECT p.id, p.text,
                       (SELECT s.id FROM similar_set s WHERE s.anchor_problem_id = p.id
                        ORDER BY s.id DESC LIMIT 1) AS similar_set_id
                FROM problem p WHERE p.id = ANY(:ids)"""),
                    {"ids": [u.payload["problem_id"] for u in units]},
                )
                .mappings()
                .all()
            )
        return {r["id"]: dict(r) for r in rows}

    def _hints(self, problems: list[str]) -> list[list[navigator.Hint]]:
        if not problems or self.hint_k < 1 or not self._kb_has_templates():
            return [[] for _ in problems]
        return [
            [navigator.Hint.from_hit(h) for h in hits]
            for hits in step_retrieval.retrieve_hints(
                self.db.engine, problems, k=self.hint_k, mode=self.retrieval_mode
            )
        ]

    def _link(self, steps: list[navigator.PlanStep]) -> list[tuple[int | None, float | None]]:
        """(version id, score) of the template step retrieval ranks first for each step."""
        if not steps or not self._kb_has_templates():
            return [(None, None)] * len(steps)
        if self.retrieval_mode != "text":
            step_retrieval.prime([s.template for s in steps], self.db)
        with self.db.engine.connect() as conn:
            hits = [
                step_retrieval.search_step(conn, s.template, s.text, k=1, mode=self.retrieval_mode)
                for s in steps
            ]
        return [(h[0].version_id, h[0].score) if h else (None, None) for h in hits]

    def _kb_has_templates(self) -> bool:
        """Checked once per worker until true: an empty KB needs no query embedding."""
        if not self._has_templates:
            with self.db.engine.connect() as conn:
                self._has_templates = bool(
                    conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM template)")).scalar()
                )
        return self._has_templates

    def process(self, units: list[Unit]) -> list[Outcome]:
        problems = self._problems(units)
        live = [u for u in units if u.payload["problem_id"] in problems]
        hints = dict(
            zip([u.id for u in live], self._hints([problems[u.payload["problem_id"]]["text"] for u in live]))
        )
        schema = navigator.plan_schema(self.max_steps)
        reqs, index = [], []
        for u in live:
            messages = navigator.plan_messages(
                problems[u.payload["problem_id"]]["text"], hints=hints[u.id], max_steps=self.max_steps
            )
            for i in range(self.n):
                seed = self.base_seed + i
                reqs.append(
                    ChatRequest(
                        messages,
                        replace(self.sampling, seed=seed),
                        tags={"unit": u.key, "i": i},
                        response_schema=schema,
                    )
                )
                index.append((u, seed))
        comps = self.backend.generate(reqs)
        errors = [c.error for c in comps if c.error]
        if errors:  # the backend, not the plan: the runner retries the units (bounded)
            raise RuntimeError(f"LLM backend failed: {errors[0]}")
        samples: dict[int, list[dict[str, Any]]] = {u.id: [] for u in units}
        failures: dict[int, list[dict[str, Any]]] = {u.id: [] for u in units}
        for (u, seed), c in zip(index, comps):
            try:
                plan = navigator.parse_plan(c.text, max_steps=self.max_steps)
            except ParseError as e:
                failures[u.id].append(
                    {
                        "reason": f"seed {seed}: unparseable plan: {e.reason}",
                        "raw_output": c.text,
                        "attempt": seed - self.base_seed,
                    }
                )
                continue
            samples[u.id].append(
                {
                    "seed": seed,
                    "plan": plan,
                    "raw": c.text,
                    "tokens": c.completion_tokens,
                    "request": navigator.recorded(hints[u.id], self.max_steps),
                }
            )
        links = iter(self._link([s for u in live for smp in samples[u.id] for s in smp["plan"].steps]))
        for u in live:
            for smp in samples[u.id]:
                smp["steps"] = [(s, *next(links)) for s in smp["plan"].steps]
        outcomes = []
        for u in units:
            if u.payload["problem_id"] not in problems:
                outcomes.append(Outcome(status="failed", failures=[{"reason": "problem no longer exists"}]))
            elif not samples[u.id]:
                outcomes.append(Outcome(status="failed", failures=failures[u.id]))
            else:
                outcomes.append(
                    Outcome(
                        data={"problem": problems[u.payload["problem_id"]], "samples": samples[u.id]},
                        failures=failures[u.id],
                    )
                )
        return outcomes

    def write(self, conn: sa.Connection, unit: Unit, outcome: Outcome, run_id: int) -> dict[str, int]:
        """All samples of the problem through the one trajectory writer (trajectories_store); a
        (problem, navigator, sample_key) already stored is left as it is (trajectories are immutable)."""
        problem, samples = outcome.data["problem"], outcome.data["samples"]
        rows = [
            {
                "problem_id": problem["id"],
                "similar_set_id": problem["similar_set_id"],
                "navigator_model": self.navigator_name,
                "sample_key": sample_key(self.sampling, smp["seed"]),
                "sampling": {
                    **replace(self.sampling, seed=smp["seed"]).to_dict(),
                    "backend": self.backend.name,
                    "model": self.backend.model,
                    **smp["request"],
                },
                "abstraction": smp["plan"].abstraction,
                "raw_output": smp["raw"],
                "run_id": run_id,
                "steps": [
                    {
                        "text": step.text,
                        "template_phrase": step.template,
                        "template_version_id": version_id,
                        "retrieval_score": score,
                    }
                    for step, version_id, score in smp["steps"]
                ],
            }
            for smp in samples
        ]
        written = insert_trajectories(conn, rows)
        steps = [step for i in written for step in rows[i]["steps"]]
        return {
            "trajectories_written": len(written),
            "steps_linked": sum(1 for s in steps if s["template_version_id"]),
            "steps_total": len(steps),
        }


def make_handler(db: Database, run_id: int, **options: Any) -> SampleHandler:
    return SampleHandler(db, run_id, **options)


def sample(
    db: Database,
    problems: str,
    role: RoleConfig | Backend,
    *,
    n: int = 8,
    navigator_name: str | None = None,
    sampling: SamplingParams = DEFAULT_SAMPLING,
    base_seed: int = 0,
    hint_k: int = 3,
    retrieval_mode: str = "hybrid",
    max_steps: int = navigator.MAX_STEPS,
    workers: int = 1,
    batch_size: int = 4,
    retry_failed: bool = False,
    lease_s: float | None = None,
    max_attempts: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Sample N navigator trajectories for each selected problem; returns the run's counts."""
    if n < 1:
        raise InputError("must be at least 1", field="--n")
    with db.engine.connect() as conn:
        ids = select_problem_ids(conn, parse_selection(problems, PROBLEM_KEYS))
    backend_desc = describe_role(role)
    name = navigator_name or (
        role.model
        if isinstance(role, Backend)
        else role.options.get("model") or role.options.get("model_path") or role.backend
    )
    params = {
        "problems": parse_selection(problems, PROBLEM_KEYS).to_dict(),
        "n": n,
        "navigator": name,
        "llm": backend_desc,
        "sampling": sampling.to_dict(),
        "base_seed": base_seed,
        "hint_k": hint_k,
        "retrieval_mode": retrieval_mode,
        "max_steps": max_steps,
        "prompt_hash": navigator.CONTRACT_HASH,
    }
    factory = functools.partial(
        make_handler,
        role=role,
        n=n,
        navigator_name=name,
        sampling=sampling,
        base_seed=base_seed,
        hint_k=hint_k,
        retrieval_mode=retrieval_mode,
        max_steps=max_steps,
    )
    extra = {k: v for k, v in (("lease_s", lease_s), ("max_attempts", max_attempts)) if v is not None}
    return run_stage(
        db,
        stage=STAGE,
        params=params,
        units=[(f"problem:{i}", {"problem_id": i}) for i in ids],
        factory=factory,
        workers=workers,
        batch_size=batch_size,
        retry_failed=retry_failed,
        progress=progress,
        counters=("trajectories_written", "steps_linked", "steps_total"),
        **extra,
    )
