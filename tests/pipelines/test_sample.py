"""Trajectory sampling with the scripted backend: plans parsed strictly, steps linked by retrieval, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from kb.templates import TemplateSpec, create_template
from pipelines import navigator
from pipelines.embed import embed_templates
from pipelines.llm import SamplingParams, create_backend
from pipelines.llm.config import RoleConfig
from pipelines.problems import import_problems
from pipelines.sample import sample

ROOT = Path(__file__).resolve().parents[2]


def plan(*steps, abstraction="A quadratic equation with integer roots."):
    """A reply in the navigator contract; a step is its text (naming a template of the same words) or
    {"template", "action"}."""
    return navigator.render_plan(
        abstraction, [(s, s) if isinstance(s, str) else (s["action"], s["template"]) for s in steps]
    )


def q(db, sql, **kw):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql), kw).all()


def setup_kb(db, tmp_path, n_problems=2) -> list[int]:
    rows = [
        {
            "problem": f"Problem number {i}: solve x^2 - {i + 3}x + {i + 2} = 0.",
            "solution": "s",
            "answer": f"1, {i + 2}",
            "subject": "Algebra",
            "level": 1,
            "unique_id": f"s/{i}",
        }
        for i in range(n_problems)
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    with Session(db.engine) as s:
        for name, scope in (
            ("Factor the quadratic", "A degree-two polynomial equation with integer roots."),
            ("Telescoping sums", "A finite sum of differences of consecutive terms."),
        ):
            create_template(
                s,
                TemplateSpec(
                    name=name,
                    category="Algebra",
                    tags=["algebra"],
                    description=f"{name}: a general method.",
                    application_scope=scope,
                    steps=["Step one.", "Step two."],
                ),
            )
        s.commit()
    embed_templates(db)
    return [r[0] for r in q(db, "SELECT id FROM problem ORDER BY source_id")]


def test_sampling_writes_parsed_plans_and_records_failures(db, tmp_path):
    setup_kb(db, tmp_path)
    good = plan(
        {"template": "Factor the quadratic", "action": "Factor the polynomial into linear factors"},
        "Set each factor to zero and solve",
    )
    replies = [
        good,
        "I think we should factor it.",
        plan(),
        good.replace("integer", "whole"),
        '{"abstraction": "x", "steps": ["ok step"], "python": "os.system(1)"}',
        good,
        good,
        '{"abstraction": "cut off", "steps": [',
    ]
    backend = create_backend("scripted", rules=[("navigator", replies)])
    out = sample(
        db,
        "all",
        backend,
        n=4,
        navigator_name="nav-test",
        sampling=SamplingParams(temperature=0.8, max_tokens=64),
        base_seed=10,
        batch_size=2,
    )
    assert out["units_done"] == 2 and out["trajectories_written"] == 4
    trajs = q(
        db,
        "SELECT problem_id, navigator_model, sample_key, sampling, abstraction, run_id FROM trajectory "
        "ORDER BY id",
    )
    assert [t.sample_key for t in trajs] == [
        "T=0.8;top_p=1;seed=10",
        "T=0.8;top_p=1;seed=13",
        "T=0.8;top_p=1;seed=11",
        "T=0.8;top_p=1;seed=12",
    ]
    assert all(t.navigator_model == "nav-test" and t.run_id == out["run_id"] for t in trajs)
    assert trajs[0].sampling["temperature"] == 0.8 and trajs[0].sampling["seed"] == 10
    steps = q(
        db,
        "SELECT s.text, s.template_phrase, v.name, s.retrieval_score FROM trajectory_step s "
        "LEFT JOIN template_version v ON v.id = s.template_version_id ORDER BY s.trajectory_id, s.position",
    )
    assert len(steps) == 8
    assert steps[0].name == "Factor the quadratic" and steps[0].retrieval_score > 0
    assert steps[0].text == "Factor the polynomial into linear factors"
    assert steps[0].template_phrase == "Factor the quadratic"
    # What the trajectory records rebuilds the exact request and reply (the contract's seam).
    sampling = trajs[0].sampling
    assert sampling["prompt_hash"] == navigator.CONTRACT_HASH and sampling["max_steps"] == navigator.MAX_STEPS
    assert len(sampling["hints"]) == 2  # both templates of the KB, retrieved for the problem
    fails = q(db, "SELECT unit_key, reason, raw_output FROM failure ORDER BY id")
    reasons = [f.reason for f in fails]
    assert len(fails) == 4 and all(f.raw_output for f in fails)
    assert any("no JSON object" in r for r in reasons)
    assert any(
        "schema violation at trajectory" in r or "schema violation at (top level)" in r for r in reasons
    )
    assert any("invalid JSON" in r for r in reasons)
    # Each request carried its own seed; every call is in the log once.
    seeds = [r[0] for r in q(db, "SELECT (params->>'seed')::int FROM llm_call ORDER BY id")]
    assert sorted(seeds) == [10, 10, 11, 11, 12, 12, 13, 13]
    # Rerun: idempotent.
    again = sample(
        db,
        "all",
        backend,
        n=4,
        navigator_name="nav-test",
        sampling=SamplingParams(temperature=0.8, max_tokens=64),
        base_seed=10,
    )
    assert again["units_done"] == 0 and q(db, "SELECT count(*) FROM trajectory")[0][0] == 4


def test_a_problem_without_any_usable_plan_fails_without_retrying(db, tmp_path):
    setup_kb(db, tmp_path, 1)
    backend = create_backend("scripted", rules=[("navigator", plan())])  # empty steps, every time
    out = sample(db, "all", backend, n=3)
    assert out["units_failed"] == 1 and out["trajectories_written"] == 0
    assert (
        q(db, "SELECT count(*) FROM failure WHERE reason LIKE '%schema violation at trajectory%'")[0][0] == 3
    )
    assert q(db, "SELECT count(*) FROM llm_call")[0][0] == 3
    assert sample(db, "all", backend, n=3)["units_failed"] == 0  # not retried forever


def test_sampling_real_math500_problems(db, shared_data, tmp_path):
    lines = (shared_data / "math500_test.jsonl").read_text().splitlines()[:4]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    import_problems(db, tmp_path / "m.jsonl", preset="math500", embed=False)
    backend = create_backend(
        "scripted", rules=[("navigator", plan("Convert to the target form", "Simplify and check the range"))]
    )
    out = sample(db, "source=math500;split=test", backend, n=2)
    assert out["trajectories_written"] == 8 and out["units_done"] == 4
    assert q(db, "SELECT count(*), count(DISTINCT (problem_id, sample_key)) FROM trajectory")[0] == (8, 8)


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from kb.db import Database, create_engine
    from pipelines.llm.config import RoleConfig
    from pipelines.sample import sample
    db = Database(url={url!r}, embedded=False, engine=create_engine({url!r}))
    role = RoleConfig("scripted", {{"rules": [["navigator", {reply!r}]], "latency_s": 0.3}})
    sample(db, "all", role, n=3, batch_size=1, hint_k=0)
""")


def test_kill_minus_9_mid_sampling_then_rerun(db, tmp_path):
    rows = [{"problem": f"Problem {i}", "answer": "1", "unique_id": f"k/{i}"} for i in range(10)]
    (tmp_path / "k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_problems(db, tmp_path / "k.jsonl", preset="math500", embed=False)
    reply = plan("Do the first thing", "Do the second thing")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT.format(url=db.url, reply=reply)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while q(db, "SELECT count(*) FROM work_unit WHERE status = 'done'")[0][0] < 2:
            if proc.poll() is not None:
                pytest.fail(f"sampling ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            assert time.time() < deadline, "no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = q(db, "SELECT count(*) FROM trajectory")[0][0]
    assert 6 <= before < 30 and before % 3 == 0  # whole units only
    role = RoleConfig("scripted", {"rules": [["navigator", reply]], "latency_s": 0.3})
    sample(db, "all", role, n=3, batch_size=4, hint_k=0)
    assert q(db, "SELECT count(*), count(DISTINCT (problem_id, sample_key)) FROM trajectory")[0] == (30, 30)
    assert q(db, "SELECT count(*) FROM trajectory_step")[0][0] == 60
    assert q(db, "SELECT status, count(*) FROM work_unit GROUP BY 1") == [("done", 10)]


def test_sample_and_evaluate_commands_with_the_tiny_model(cli, db, tmp_path):
    from demo.tiny_model import build_tiny_model

    ids = setup_kb(db, tmp_path, 2)
    model = build_tiny_model(tmp_path / "tiny")
    sampled = cli(
        "sample",
        "--problems",
        f"ids={ids[0]},{ids[1]}",
        "--n",
        "2",
        "--navigator",
        f"transformers:{model}",
        "--max-tokens",
        "8",
        "--navigator-name",
        "tiny",
        "--json",
        expect=None,
    )
    out = json.loads(sampled.stdout)
    assert out["failures_recorded"] + out["trajectories_written"] == 4  # garbage plans: recorded, not crashed
    assert sampled.exit_code == {"succeeded": 0, "partial": 6, "failed": 5}[out["outcome"]]  # and said so
    for pid in ids:
        with db.engine.begin() as conn:
            from pipelines.trajectories_store import insert_trajectory

            insert_trajectory(conn, pid, [("Factor it", None, None)], "hand", "k", abstraction="quadratic")
    ev = json.loads(
        cli(
            "rollouts",
            "--trajectories",
            "navigator=hand",
            "--inference",
            f"transformers:{model}",
            "--max-tokens",
            "8",
            "--json",
        ).stdout
    )
    assert ev["units_done"] == 2 and ev["rollouts_written"] == 2 and ev["rollouts_correct"] == 0
    assert q(db, "SELECT count(*) FROM llm_call WHERE backend = 'transformers'")[0][0] == 6
    missing = cli("rollouts", "--inference", f"transformers:{tmp_path / 'nope'}", expect=1).output
    assert "never downloaded" in missing
