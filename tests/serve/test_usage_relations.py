"""Template usage as rows: the solver's trace writer records the version each step used, with the verdict."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from demo.solve_templates import add_templates
from pipelines.llm import create_backend
from serve.solver import Solver, SolverConfig
from serve.traces import get_session


@pytest.fixture
def library(db):
    return add_templates(db)


def _plan(*steps):
    return json.dumps(
        {"abstraction": "a series", "trajectory": [{"step": s, "template": t} for s, t in steps]}
    )


def _verdict(v, reason="ok", **kw):
    return json.dumps({"verdict": v, "reason": reason, **kw})


def test_each_step_round_writes_its_template_version_and_verdict(db, library):
    nav = create_backend(
        "scripted",
        rules=[
            (
                r'"trajectory"',
                _plan(
                    ("Find the first term", "Arithmetic series sum"),
                    ("Sum the series", "Arithmetic series sum"),
                ),
            ),
            (r"Result of step 1 ", _verdict("continue")),
            (
                r"Result of step 2 ",
                [
                    _verdict(
                        "adjust",
                        "try another",
                        changes=[{"op": "change", "step": 2, "template": "Telescoping sum"}],
                    ),
                    _verdict("stop", "done", answer="5050"),
                ],
            ),
            (r"Your step now:", "work \\boxed{5050}"),
        ],
    )
    solver = Solver(db, nav, nav, SolverConfig(top_k=2))
    result = solver.solve("Sum the integers from 1 to 100.", reference="5050")
    solver.close()
    session = get_session(db, result.session_id)
    expected = [
        (
            r["round_no"],
            r["adjustment"]["step_no"],
            r["adjustment"]["template"]["version_id"],
            r["adjustment"]["outcome"],
            r["adjustment"]["outcome"] == "accepted",
        )
        for r in session["rounds_detail"]
        if r["kind"] == "step"
    ]
    with db.engine.connect() as conn:
        got = [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT round_no, step_no, version_id, outcome, accepted FROM solve_step_template "
                    "WHERE session_id = :s ORDER BY round_no"
                ),
                {"s": result.session_id},
            )
        ]
        # "success rate per template version" is one join
        rates = dict(
            conn.execute(
                sa.text(
                    "SELECT u.version_id, avg(s.correct::int) FROM solve_step_template u "
                    "JOIN solve_session s ON s.id = u.session_id GROUP BY u.version_id"
                )
            ).all()
        )
    assert got == expected and len(got) == 3
    assert [a for *_, a in got] == [True, False, True]  # the redo is recorded as not accepted
    assert set(rates) == {v for _, _, v, _, _ in got} and all(float(r) == 1.0 for r in rates.values())
    with db.engine.begin() as conn:  # rows go with their session
        conn.execute(sa.text("DELETE FROM solve_session WHERE id = :s"), {"s": result.session_id})
        assert conn.execute(sa.text("SELECT count(*) FROM solve_step_template")).scalar() == 0


def test_rollout_view_links_each_rollout_to_its_trajectory_step_versions(db, library):
    from kb.models import Problem, Rollout, Trajectory, TrajectoryStep

    versions = list(library.values())
    with db.session() as s:
        p = Problem(text="1+1", answer="2", split="train", content_hash="p")
        s.add(p)
        s.flush()
        t = Trajectory(problem_id=p.id, navigator_model="nav", sample_key="seed=0")
        s.add(t)
        s.flush()
        s.add_all(
            [
                TrajectoryStep(trajectory_id=t.id, position=i, text=f"s{i}", template_version_id=v)
                for i, v in enumerate(versions[:2])
            ]
            + [TrajectoryStep(trajectory_id=t.id, position=2, text="no template")]
        )
        s.add_all(
            [Rollout(trajectory_id=t.id, problem_id=p.id, sample_index=k, correct=k == 0) for k in range(2)]
        )
        s.commit()
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT version_id, count(*), avg(correct::int) FROM rollout_step_template "
                "GROUP BY version_id ORDER BY version_id"
            )
        ).all()
    assert [(v, n, float(a)) for v, n, a in rows] == [(v, 2, 0.5) for v in sorted(versions[:2])]
