"""`reasonflux solve` and `reasonflux sessions list | show` through the CLI, with the scripted backend."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from demo.solve_templates import add_templates
from kb.models import NavigatorModel, Problem


@pytest.fixture
def library(db):
    return add_templates(db)


def test_solve_one_problem_shows_rounds_and_stores_the_session(cli, library):
    r = cli(
        "solve",
        "What is the sum of the first 10 positive integers?",
        "--navigator",
        "scripted",
        "--reference",
        "0",
    )
    assert "plan: 1. Identify" in r.stderr
    assert (
        "round 1 · step 1/2" in r.stderr and "stop:" in r.stderr and "solved · answer 0 (correct)" in r.stderr
    )
    assert "solved" in r.stdout
    out = json.loads(
        cli(
            "solve",
            "What is 1 + 1?",
            "--navigator",
            "scripted",
            "--inference",
            "scripted",
            "--quiet",
            "--json",
        ).stdout
    )
    assert out["status"] == "solved" and out["session_id"] == 2 and out["rounds"] == 2 and out["templates"]

    listed = json.loads(cli("sessions", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [2, 1] and listed[1]["correct"] is True
    assert [
        s["id"]
        for s in json.loads(cli("sessions", "list", "--status", "solved", "--limit", "1", "--json").stdout)
    ] == [2]
    trace = cli("sessions", "show", "1").stdout
    for needle in (
        "Session 1 · solved · 2 rounds",
        "Round 0 · plan",
        "Round 1 · step 1/2",
        "Template: ",
        "Navigator: continue",
        "Navigator: stop",
        "Final answer: 0 (correct)",
    ):
        assert needle in trace, needle
    full = json.loads(cli("sessions", "show", "1", "--json").stdout)
    assert [r["kind"] for r in full["rounds_detail"]] == ["plan", "step", "step", "final"]
    assert full["rounds_detail"][1]["navigator_prompt"][0]["role"] == "system"
    assert full["llm_calls"] == {"solve:navigator": 3, "solve:inference": 2}
    assert "no solve session 99" in cli("sessions", "show", "99", expect=1).output


def test_solve_file_and_selection_and_bad_input(cli, db, library, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("What is 3 + 4?\n\nGive a number.\n")
    one = json.loads(cli("solve", "--file", str(f), "--navigator", "scripted", "-q", "--json").stdout)
    with db.engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT problem_text FROM solve_session WHERE id = :i"), {"i": one["session_id"]}
        ).scalar()
    assert text == "What is 3 + 4?\n\nGive a number."

    with db.session() as s:
        for i, (t, a) in enumerate(
            [("What is 0 + 0?", "0"), ("What is 5 + 5?", "10"), ("What is 0 * 9?", "0")]
        ):
            s.add(Problem(text=t, answer=a, source="cli", content_hash=f"c{i}", difficulty=1))
        s.commit()
    many = json.loads(
        cli(
            "solve",
            "--problems",
            "source=cli",
            "--navigator",
            "scripted",
            "--concurrency",
            "3",
            "-q",
            "--json",
        ).stdout
    )
    assert [(m["problem_id"], m["correct"]) for m in many] == [(1, True), (2, False), (3, True)]
    with db.engine.connect() as conn:
        runs = conn.execute(
            sa.text(
                "SELECT r.stage, count(s.id) FROM pipeline_run r JOIN solve_session s "
                "ON s.run_id = r.id GROUP BY r.id, r.stage ORDER BY r.id"
            )
        ).all()
    assert [tuple(r) for r in runs] == [("solve", 1), ("solve", 3)]

    assert cli("solve", "--navigator", "scripted", expect=2).exit_code == 2  # nothing to solve
    assert "exactly one" in cli("solve", "x", "--file", str(f), "--navigator", "scripted", expect=2).output
    assert (
        "no problems match"
        in cli("solve", "--problems", "source=none", "--navigator", "scripted", expect=2).output
    )
    assert (
        "expected `all` or key=value"
        in cli("solve", "--problems", "bogus", "--navigator", "scripted", expect=2).output
    )
    assert "no LLM configured for the navigator" in cli("solve", "x", expect=2).output
    assert "no navigator or model named 'nope'" in cli("solve", "x", "--navigator", "nope", expect=1).output
    assert cli("solve", "x", "--navigator", "scripted", "--max-rounds", "0", expect=2).exit_code == 2


@pytest.mark.slow
def test_registered_navigator_name_runs_on_transformers(cli, db, library, tmp_path):
    from demo.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "nav", seed=1)
    with db.session() as s:
        s.add(NavigatorModel(name="tiny-nav", path=str(path), base_model="tiny"))
        s.commit()
    out = json.loads(
        cli(
            "solve",
            "What is 2 + 2?",
            "--navigator",
            "tiny-nav",
            "--parse-retries",
            "0",
            "-q",
            "--json",
            "--llm-config",
            _sampling_config(tmp_path),
            expect=5,  # the session failed: so does the command
        ).stdout
    )
    assert out["status"] == "failed" and "unparseable" in out["reason"]
    with db.engine.connect() as conn:
        backend, model, tokens = conn.execute(
            sa.text("SELECT backend, model, completion_tokens FROM llm_call WHERE session_id = :s"),
            {"s": out["session_id"]},
        ).one()
    assert (backend, model) == ("transformers", "tiny-nav") and 0 < tokens <= 8  # the file's sampling applies


def _sampling_config(tmp_path) -> str:
    """The navigator name comes from the flag; the file only keeps the tiny model's replies short."""
    path = tmp_path / "llm.toml"
    path.write_text(
        '[roles.navigator]\nbackend = "transformers"\nmodel_path = "unused"\n'
        "[roles.navigator.sampling]\nmax_tokens = 8\n"
    )
    return str(path)


def test_solve_demo_returns_session_and_trace(db, library):
    from demo.solve import DEMO_ANSWER, run_solve_demo

    demo = run_solve_demo(db)
    assert demo.session_id == 1
    assert f"Final answer: {DEMO_ANSWER} (correct)" in demo.trace and "Round 1 · step 1/2" in demo.trace
