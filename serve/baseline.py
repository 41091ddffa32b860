"""Baselines for the eval harness: the inference model alone, one call (greedy) and Best-of-N (majority vote).

Same model, same grader, no templates and no navigator, so the comparison isolates what the
multi-round solver adds and what it costs. Every call is logged to llm_call with the eval run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kb.db import Database
from pipelines.grader import extract_answer, normalize
from pipelines.llm.base import Backend, ChatRequest, SamplingParams
from pipelines.llm.calls import call_rows, log_calls
from pipelines.prompts import baseline_messages
from serve.solver import bounded_grade

STAGE = "eval:baseline"
CHUNK = 256  # requests per generate call; the backend (or the batcher in front of it) batches further
BEST_OF_TEMPERATURE = 0.7


def _generate_logged(db: Database, backend: Backend, requests: list[ChatRequest], run_id: int | None):
    out = []
    for i in range(0, len(requests), CHUNK):
        chunk = requests[i : i + CHUNK]
        completions = backend.generate(chunk)
        inner = getattr(backend, "backend", backend)  # a Batcher logs as the backend it fronts
        with db.engine.begin() as conn:
            log_calls(conn, call_rows(inner, chunk, completions, run_id=run_id, stage=STAGE))
        out.extend(completions)
    return out


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common answer (by the grader's normal form), the earliest on ties; None if none."""
    keyed = [(normalize(a), a) for a in answers if a]
    if not keyed:
        return None
    counts = Counter(k for k, _ in keyed)
    best = max(counts.values())
    return next(a for k, a in keyed if counts[k] == best)


def run_baselines(
    db: Database,
    backend: Backend,
    problems: Sequence[dict[str, Any]],
    *,
    params: SamplingParams,
    best_of: int = 0,
    run_id: int | None = None,
) -> dict[int, dict[str, Any]]:
    """Per problem id: the single-call result and, with best_of > 1, the Best-of-N majority result."""
    greedy = replace(params, temperature=0.0)
    requests = [
        ChatRequest(baseline_messages(p["text"]), greedy, tags={"baseline": "single", "problem": p["id"]})
        for p in problems
    ]
    for p in problems if best_of > 1 else []:
        requests += [
            ChatRequest(
                baseline_messages(p["text"]),
                replace(params, temperature=params.temperature or BEST_OF_TEMPERATURE, seed=j),
                tags={"baseline": "best_of", "problem": p["id"], "sample": j},
            )
            for j in range(best_of)
        ]
    completions = _generate_logged(db, backend, requests, run_id)
    out: dict[int, dict[str, Any]] = {}
    for p, c in zip(problems, completions):
        answer = extract_answer(c.text)
        out[p["id"]] = {
            "single_answer": answer,
            "single_correct": _grade(answer, p),
            "single_calls": 1,
            "single_tokens": c.prompt_tokens + c.completion_tokens,
        }
    samples = completions[len(problems) :]
    for i, p in enumerate(problems if best_of > 1 else []):
        group = samples[i * best_of : (i + 1) * best_of]
        answers = [extract_answer(c.text) for c in group]
        voted = majority(answers)
        out[p["id"]].update(
            best_of_answer=voted,
            best_of_correct=_grade(voted, p),
            best_of_pass=any(_grade(a, p) for a in answers),
            best_of_calls=len(group),
            best_of_tokens=sum(c.prompt_tokens + c.completion_tokens for c in group),
        )
    return out


def _grade(answer: str | None, problem: dict[str, Any]) -> bool | None:
    if problem.get("answer") is None:
        return None
    return bounded_grade(answer, problem["answer"])
