"""Every ```sql block in docs/sql.md runs through the read-only runner on a database with a little data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kb import templates as T
from kb.db import session_scope
from kb.errors import KbError
from kb.models import (
    DatasetVersion,
    DpoPair,
    Failure,
    LlmCall,
    Problem,
    Rollout,
    SolveSession,
    SolveStepTemplate,
    TemplateEmbedding,
    TrainingMetric,
    TrainingRun,
    Trajectory,
    TrajectoryStep,
    WorkUnit,
)
from kb.readonly_query import run_readonly
from kb.runs import pipeline_run

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
BLOCKS = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def _spec(name, category="Sequences", section="Arithmetic", **kw):
    return T.TemplateSpec(name=name, category=category, section=section, **kw)


@pytest.fixture
def populated(db):
    """Two import runs, a hand edit, trajectories with rollouts, LLM calls, failures, a dataset and a training run."""
    with pipeline_run(db, "import", {"file": "a.json"}) as (first_run, _), session_scope(db) as s:
        v_sum = T.create_template(
            s,
            _spec("Sum of terms", tags=["sums", "series"], description="Pair the first and last terms."),
            source_kind="file",
            run_id=first_run,
        )
        v_ratio = T.create_template(
            s,
            _spec("Common ratio", section="Geometric", tags=["series"]),
            source_kind="file",
            run_id=first_run,
        )
        T.create_template(
            s,
            _spec("Modulus", category="Complex Numbers", section=None, tags=["modulus"]),
            source_kind="file",
            run_id=first_run,
        )
    with session_scope(db) as s:
        T.edit_template(
            s, v_sum.template_id, {"description": "Pair terms: S_n = n(a_1 + a_n)/2."}, change_note="formula"
        )
        T.set_status(s, "Complex Numbers/Modulus", "deprecated")
    with pipeline_run(db, "import", {"file": "b.json"}) as (second_run, _), session_scope(db) as s:
        T.edit_template(
            s,
            v_ratio.template_id,
            {"steps": ["q = a2 / a1"]},
            source_kind="file",
            run_id=second_run,
            change_note="updated by import",
        )
    with session_scope(db) as s:
        s.add(
            TemplateEmbedding(
                version_id=v_ratio.id, model="all-MiniLM-L6-v2", dim=384, embedding=[1.0] + [0.0] * 383
            )
        )
        problems = [
            Problem(
                text=f"problem {i}", answer=str(i), split="train", subject="Algebra", content_hash=f"h{i}"
            )
            for i in range(3)
        ]
        s.add_all(problems)
        s.flush()
        trajectories = [
            Trajectory(
                problem_id=problems[0].id, navigator_model="nav", sample_key=f"seed={i}", raw_output="plan"
            )
            for i in range(2)
        ]
        s.add_all(trajectories)
        s.flush()
        s.add_all(
            [
                TrajectoryStep(
                    trajectory_id=trajectories[0].id,
                    position=0,
                    text="sum",
                    template_version_id=v_sum.id,
                    retrieval_score=0.9,
                ),
                TrajectoryStep(
                    trajectory_id=trajectories[1].id,
                    position=0,
                    text="ratio",
                    template_version_id=v_ratio.id,
                    retrieval_score=0.7,
                ),
            ]
        )
        # trajectory 0 is right on 2 of 2 problems, trajectory 1 on 0 of 2
        s.add_all(
            [
                Rollout(
                    trajectory_id=t.id,
                    problem_id=p.id,
                    correct=(t is trajectories[0]),
                    model="m",
                    prompt_tokens=10,
                    completion_tokens=5,
                )
                for t in trajectories
                for p in problems[1:]
            ]
        )
        s.add(
            DpoPair(
                problem_id=problems[0].id,
                chosen_trajectory_id=trajectories[0].id,
                rejected_trajectory_id=trajectories[1].id,
                chosen_reward=1.0,
                rejected_reward=0.0,
                margin=1.0,
                params={"min_margin": 0.5},
                params_hash="p1",
            )
        )
        s.add_all(
            [
                LlmCall(
                    run_id=second_run,
                    stage="sample",
                    backend="scripted",
                    model="nav",
                    latency_ms=ms,
                    prompt_tokens=100,
                    completion_tokens=20,
                    error=None if ms < 30 else "timeout",
                )
                for ms in (10.0, 20.0, 30.0)
            ]
        )
        s.add(Failure(run_id=second_run, stage="sample", reason="no steps in output", raw_output="??"))
        s.add(WorkUnit(stage="evaluate", scope="s1", unit_key="t1", status="done"))
        s.add(
            DatasetVersion(
                id="dpo-0123456789ab",
                kind="dpo",
                schema_revision="0002",
                row_counts={"pairs": 1},
                run_id=second_run,
            )
        )
        s.flush()
        run = TrainingRun(stage="dpo", base_model="tiny", dataset_version_id="dpo-0123456789ab")
        s.add(run)
        s.flush()
        s.add_all([TrainingMetric(run_id=run.id, step=k, metrics={"loss": 1.0 / k}) for k in (1, 2)])
        s.add(SolveSession(problem_text="1+1", status="solved", correct=True, rounds=2))
        solved, failed = (
            SolveSession(problem_text="2+2", status="solved", correct=True, rounds=2),
            SolveSession(problem_text="3+3", status="failed", correct=False, rounds=1),
        )
        s.add_all([solved, failed])
        s.flush()
        s.add_all(
            [
                SolveStepTemplate(
                    session_id=solved.id,
                    round_no=1,
                    step_no=1,
                    version_id=v_sum.id,
                    score=0.8,
                    outcome="redo",
                    accepted=False,
                ),
                SolveStepTemplate(
                    session_id=solved.id,
                    round_no=2,
                    step_no=1,
                    version_id=v_sum.id,
                    score=0.8,
                    outcome="accepted",
                    accepted=True,
                ),
                SolveStepTemplate(
                    session_id=failed.id,
                    round_no=1,
                    step_no=1,
                    version_id=v_ratio.id,
                    score=0.5,
                    outcome="accepted",
                    accepted=True,
                ),
            ]
        )
    return {"first_run": first_run, "second_run": second_run, "v_sum": v_sum.id, "v_ratio": v_ratio.id}


def test_the_doc_has_at_least_ten_queries():
    assert len(BLOCKS) >= 10


def test_every_documented_query_runs_read_only(populated, db):
    failures = []
    for block in BLOCKS:
        try:
            assert run_readonly(db.engine, block, timeout_s=30).columns
        except (KbError, AssertionError) as e:  # collect them all: one run shows every broken query
            failures.append(f"{e}\n{block}")
    assert not failures, "\n\n".join(failures)


def _query(starting: str) -> str:
    matches = [b for b in BLOCKS if b.lstrip().startswith(starting)]
    assert len(matches) == 1, starting
    return matches[0]


def test_documented_queries_return_the_inserted_data(populated, db):
    per_category = run_readonly(db.engine, _query("SELECT category, status, count(*)")).rows
    assert per_category == [("Complex Numbers", "deprecated", 1), ("Sequences", "active", 2)]

    history = run_readonly(db.engine, _query("SELECT version_no, is_current")).records()
    assert [(h["version_no"], h["is_current"], h["change_note"]) for h in history] == [
        (1, False, "created"),
        (2, True, "formula"),
    ]

    latest_import = run_readonly(db.engine, _query("SELECT t.key, v.version_no, v.change_note")).records()
    assert [(r["key"], r["version_no"], r["run_id"]) for r in latest_import] == [
        ("Sequences/Geometric/Common ratio", 2, populated["second_run"])
    ]

    missing = run_readonly(db.engine, _query("SELECT c.key, c.version_no")).rows
    assert missing == [
        ("Complex Numbers/Modulus", 1),
        ("Sequences/Arithmetic/Sum of terms", 2),
        ("Sequences/Geometric/Common ratio", 2),
    ]  # the vector belongs to version 1

    by_reward = run_readonly(db.engine, _query("SELECT t.key, count(DISTINCT r.trajectory_id)")).rows
    assert [(k, n, float(r)) for k, n, r in by_reward] == [
        ("Sequences/Arithmetic/Sum of terms", 1, 1.0),
        ("Sequences/Geometric/Common ratio", 1, 0.0),
    ]

    calls = run_readonly(db.engine, _query("SELECT run_id, stage, backend")).records()
    assert [(c["calls"], c["errors"], c["prompt_tokens"], float(c["p50_ms"])) for c in calls] == [
        (3, 1, 300, 20.0)
    ]


def test_template_usage_queries_join_solves_and_rollouts_to_versions(populated, db):
    solves = run_readonly(
        db.engine, _query("SELECT h.key, h.version_no, h.author, count(*) AS steps")
    ).records()
    assert [
        (
            r["key"],
            r["version_no"],
            r["steps"],
            r["accepted_steps"],
            r["sessions"],
            float(r["session_success_rate"]),
        )
        for r in solves
    ] == [
        ("Sequences/Arithmetic/Sum of terms", 1, 2, 1, 1, 1.0),
        ("Sequences/Geometric/Common ratio", 1, 1, 1, 1, 0.0),
    ]
    rollouts = run_readonly(
        db.engine, _query("SELECT h.key, h.version_no, count(DISTINCT x.trajectory_id)")
    ).rows
    assert [(k, v, t, n, float(rate)) for k, v, t, n, rate in rollouts] == [
        ("Sequences/Arithmetic/Sum of terms", 1, 1, 2, 1.0),
        ("Sequences/Geometric/Common ratio", 1, 1, 2, 0.0),
    ]
    versions = run_readonly(db.engine, _query("SELECT h.key, h.version_no, h.is_current")).records()
    assert [(r["key"], r["version_no"], r["step_acceptance"] is not None) for r in versions] == [
        ("Sequences/Arithmetic/Sum of terms", 1, True),
        ("Sequences/Arithmetic/Sum of terms", 2, False),
        ("Sequences/Geometric/Common ratio", 1, True),
        ("Sequences/Geometric/Common ratio", 2, False),
    ]
