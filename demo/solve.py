"""The solve part of `reasonflux demo`: one session against the live KB, its trace rendered."""

from __future__ import annotations

from typing import NamedTuple

from demo.play_along import play_along_backend
from kb.db import Database
from pipelines.llm.base import Backend
from serve.solver import Solver, SolverConfig
from serve.traces import get_session, render_trace

DEMO_PROBLEM = "What is the sum of the first 100 positive integers?"
DEMO_ANSWER = "5050"


class DemoSolve(NamedTuple):
    session_id: int
    trace: str


def run_solve_demo(
    db: Database,
    navigator: Backend | None = None,
    inference: Backend | None = None,
    problem: str = DEMO_PROBLEM,
    *,
    reference: str | None = None,
    plan_hints: int = SolverConfig.plan_hints,
    config: SolverConfig | None = None,
) -> DemoSolve:
    """Solve PROBLEM (default: a scripted navigator and inference that know the demo answer) under CONFIG
    (default: two minutes, PLAN_HINTS template hints in the plan request)."""
    if navigator is None or inference is None:
        scripted = play_along_backend({DEMO_PROBLEM: DEMO_ANSWER})
        navigator, inference = navigator or scripted, inference or scripted
    if reference is None and problem == DEMO_PROBLEM:
        reference = DEMO_ANSWER
    config = config or SolverConfig(max_seconds=120, plan_hints=plan_hints)
    with Solver(db, navigator, inference, config) as solver:
        result = solver.solve(problem, reference=reference)
    return DemoSolve(result.session_id, render_trace(get_session(db, result.session_id)))
