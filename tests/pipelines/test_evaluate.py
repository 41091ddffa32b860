"""Reward evaluation: rollouts on similar sets, grading, failure paths, kill -9; tiny-model end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.evaluate import evaluate
from pipelines.grader import GRADER_NAME
from pipelines.llm import create_backend
from pipelines.llm.config import RoleConfig
from pipelines.problems import import_problems
from pipelines.trajectories_store import insert_trajectory

ROOT = Path(__file__).resolve().parents[2]


def q(db, sql, **kw):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql), kw).all()


def load(db, tmp_path, rows) -> list[int]:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    return [r[0] for r in q(db, "SELECT id FROM problem ORDER BY source_id")]


def similar_set(db, anchor: int, members: list[int]) -> int:
    with db.engine.begin() as conn:
        build = conn.execute(
            sa.text(
                "INSERT INTO similar_build (method, params, params_hash) VALUES ('test', '{}', :h) "
                "ON CONFLICT (params_hash) DO UPDATE SET method = 'test' RETURNING id"
            ),
            {"h": "t"},
        ).scalar()
        sid = conn.execute(
            sa.text(
                "INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size) VALUES (:b, :a, 'test', :n) "
                "RETURNING id"
            ),
            {"b": build, "a": anchor, "n": len(members)},
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO similar_set_member (set_id, problem_id, rank, similarity) "
                "VALUES (:s, :p, :r, 0.9)"
            ),
            [{"s": sid, "p": p, "r": i} for i, p in enumerate(members)],
        )
    return sid


def trajectory(db, problem_id: int, set_id: int | None, key: str = "seed=0") -> int:
    with db.engine.begin() as conn:
        return insert_trajectory(
            conn,
            problem_id,
            [("Factor the polynomial", None, None), ("Solve each factor", None, None)],
            "nav",
            key,
            abstraction="quadratic",
            similar_set_id=set_id,
        )


ROWS = [
    {"problem": "Problem A: what is 1/2 + 1/4?", "answer": "\\frac34", "unique_id": "e/0"},
    {"problem": "Problem B: what is 2 + 2?", "answer": "4", "unique_id": "e/1"},
    {"problem": "Problem C: what is 3 * 3?", "answer": "9", "unique_id": "e/2"},
    {"problem": "Problem D: no reference answer here", "unique_id": "e/3"},
]
REPLIES = {
    "A": "Adding gives $\\boxed{0.75}$.",
    "B": "So the answer is \\boxed{5}.",
    "C": "It is nine, I think.",
    "D": "\\boxed{1}",
}


def by_problem(messages):
    return REPLIES[re.search(r"Problem ([A-D]):", messages[1]["content"]).group(1)]


def test_rollouts_on_the_similar_set_are_graded_and_rewarded(db, tmp_path):
    a, b, c, d = load(db, tmp_path, ROWS)
    sid = similar_set(db, a, [b, c, d])
    t1 = trajectory(db, a, sid)
    t2 = trajectory(db, b, None)  # no similar set: evaluated on its anchor alone
    backend = create_backend("scripted", rules=[("Plan", by_problem)])
    out = evaluate(db, "all", backend, samples=2)
    assert out["units_done"] == 2
    assert out["evaluated_on_anchor_only"] == 1
    rollouts = q(
        db,
        "SELECT trajectory_id, problem_id, sample_index, extracted_answer, correct, grader, run_id "
        "FROM rollout ORDER BY trajectory_id, problem_id, sample_index",
    )
    # The set's members with an answer (B, C; D has none), two samples each; t2 on B alone.
    assert [(r.trajectory_id, r.problem_id) for r in rollouts] == [
        (t1, b),
        (t1, b),
        (t1, c),
        (t1, c),
        (t2, b),
        (t2, b),
    ]
    assert [r.extracted_answer for r in rollouts] == ["5", "5", None, None, "5", "5"]
    assert not any(r.correct for r in rollouts)
    assert all(r.grader == GRADER_NAME and r.run_id == out["run_id"] for r in rollouts)
    fails = q(db, "SELECT unit_key, reason, raw_output FROM failure ORDER BY id")
    assert [f.unit_key for f in fails] == [f"trajectory:{t1}"] * 2
    assert all("no final answer" in f.reason and f.raw_output == REPLIES["C"] for f in fails)
    rewards = dict(q(db, "SELECT trajectory_id, reward FROM trajectory_reward"))
    assert rewards == {t1: 0.0, t2: 0.0}
    assert out["rewards"]["evaluated"] == 2
    # Rerun: nothing new.
    assert evaluate(db, "all", backend, samples=2)["units_done"] == 0
    assert q(db, "SELECT count(*) FROM rollout")[0][0] == 6


def test_correct_answers_in_other_forms_score(db, tmp_path):
    a, b, *_ = load(db, tmp_path, ROWS)
    t = trajectory(db, b, similar_set(db, b, [a]))
    backend = create_backend("scripted", rules=[("Plan", by_problem)])
    out = evaluate(db, f"ids={t}", backend)
    assert out["rollouts_correct"] == 1
    assert q(db, "SELECT extracted_answer, correct FROM rollout") == [("0.75", True)]
    assert q(db, "SELECT reward FROM trajectory_reward")[0][0] == 1.0


def test_backend_errors_retry_the_unit_not_grade_it(db, tmp_path):
    a, *_ = load(db, tmp_path, ROWS)
    trajectory(db, a, None)
    backend = create_backend("scripted", rules=[])  # no rule: every call errors
    out = evaluate(db, "all", backend, max_attempts=2)
    assert out["units_failed"] == 1 and q(db, "SELECT count(*) FROM rollout")[0][0] == 0
    assert q(db, "SELECT count(*) FROM failure WHERE reason LIKE '%LLM backend failed%'")[0][0] == 2


def test_evaluating_real_math500_problems(db, shared_data, tmp_path):
    lines = (shared_data / "math500_test.jsonl").read_text().splitlines()[:4]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    import_problems(db, tmp_path / "m.jsonl", preset="math500", embed=False)
    answers = {r[0]: r[1] for r in q(db, "SELECT id, answer FROM problem")}
    ids = sorted(answers)
    t = trajectory(db, ids[0], similar_set(db, ids[0], ids[1:]))

    def reply(messages):  # the right answer for every problem, as the reference writes it
        text = messages[1]["content"]
        pid = next(i for i in ids if q(db, "SELECT text FROM problem WHERE id = :i", i=i)[0][0] in text)
        return f"Following the plan... $\\boxed{{{answers[pid]}}}$"

    out = evaluate(db, f"ids={t}", create_backend("scripted", rules=[("Plan", reply)]))
    assert out["rollouts_written"] == 3 and out["rollouts_correct"] == 3


_KILL_SCRIPT = textwrap.dedent("""
    from kb.db import Database, create_engine
    from pipelines.evaluate import evaluate
    from pipelines.llm.config import RoleConfig
    db = Database(url={url!r}, embedded=False, engine=create_engine({url!r}))
    evaluate(db, "all", RoleConfig("scripted", {{"default": "\\\\boxed{{4}}", "latency_s": 0.3}}), samples=2,
             batch_size=1)
""")


def test_kill_minus_9_mid_evaluation_then_rerun(db, tmp_path):
    ids = load(
        db, tmp_path, [{"problem": f"Problem {i}", "answer": "4", "unique_id": f"k/{i}"} for i in range(3)]
    )
    for i in range(8):
        trajectory(db, ids[i % 3], None, key=f"seed={i}")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT.format(url=db.url)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while q(db, "SELECT count(*) FROM work_unit WHERE status = 'done'")[0][0] < 2:
            if proc.poll() is not None:
                pytest.fail(f"evaluation ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            assert time.time() < deadline, "no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = q(db, "SELECT count(*) FROM rollout")[0][0]
    assert 4 <= before < 16 and before % 2 == 0  # whole units only
    evaluate(db, "all", RoleConfig("scripted", {"default": "\\boxed{4}"}), samples=2)
    assert q(
        db,
        "SELECT count(*), count(DISTINCT (trajectory_id, problem_id, sample_index)), "
        "count(*) FILTER (WHERE correct) FROM rollout",
    )[0] == (16, 16, 16)


def _stored(db, run_id: int) -> dict:
    (row,) = q(
        db,
        "SELECT (SELECT count(*) FROM llm_call WHERE run_id = :r), (SELECT count(*) FROM failure WHERE run_id = :r), "
        "(SELECT count(*) FROM template_version WHERE run_id = :r), (SELECT count(*) FROM trajectory WHERE run_id = :r), "
        "(SELECT count(*) FROM rollout WHERE run_id = :r)",
        r=run_id,
    )
    return dict(zip(("llm_calls", "failures", "template_versions", "trajectories", "rollouts"), row))


@pytest.mark.slow
def test_tiny_model_end_to_end_through_every_stage(db, tmp_path):
    from demo.tiny_model import build_tiny_model
    from pipelines import navigator
    from pipelines.llm.base import SamplingParams
    from pipelines.mine import mine
    from pipelines.sample import sample

    rows = [
        {
            "problem": f"Problem {c}: compute {i} + {i}.",
            "solution": f"{i} + {i} = {2 * i}",
            "answer": str(2 * i),
            "subject": "Prealgebra",
            "unique_id": f"d/{i}",
        }
        for i, c in enumerate("XYZ")
    ]
    ids = load(db, tmp_path, rows)
    role = RoleConfig("transformers", {"model_path": str(build_tiny_model(tmp_path / "tiny"))})
    selection = "ids=" + ",".join(map(str, ids))
    short = SamplingParams(temperature=0.0, max_tokens=16)
    mined = mine(db, selection, role, max_retries=1, sampling=short, progress=False)
    sampled = sample(
        db,
        selection,
        role,
        n=2,
        navigator_name="tiny",
        sampling=SamplingParams(temperature=0.8, max_tokens=16),
        progress=False,
    )
    # A hand-written plan per problem, so evaluation has something to roll out even where no sampled plan parsed.
    with db.engine.begin() as conn:
        for pid in ids:
            steps = [("Restate the problem", None, None), ("Compute the answer", None, None)]
            insert_trajectory(conn, pid, steps, "fallback", "test", sampling=navigator.recorded())
    evaluated = evaluate(db, "problem=" + ",".join(map(str, ids)), role, sampling=short, progress=False)
    # Garbage output from a random model: every mining attempt (2 per problem) fails to parse, recorded.
    stored = _stored(db, mined["run_id"])
    assert stored["llm_calls"] == 6 and stored["failures"] == 6
    assert stored["template_versions"] == 0 and mined["units_failed"] == 3
    stored = _stored(db, sampled["run_id"])
    assert stored["llm_calls"] == 6
    assert stored["failures"] + stored["trajectories"] == 6
    # Evaluate rolled out every trajectory of these problems; garbage is graded, not crashed on.
    n_traj = q(db, "SELECT count(*) FROM trajectory")[0][0]
    stored = _stored(db, evaluated["run_id"])
    assert stored["rollouts"] == n_traj >= 3
    assert stored["llm_calls"] == n_traj
    calls = q(db, "SELECT backend, model, prompt_tokens > 0, completion_tokens > 0 FROM llm_call")
    assert {c[0] for c in calls} == {"transformers"} and all(c[2] and c[3] for c in calls)
