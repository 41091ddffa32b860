"""`reasonflux eval` on a few problems: the comparison table, breakdowns, per-problem results and the PNG."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from demo.play_along import play_along_backend
from demo.solve_templates import add_templates
from kb.models import Problem
from serve.baseline import majority
from serve.eval import load_problems, run_eval
from serve.solver import Solver

PROBLEMS = [  # text, answer, subject, level; the scripted model knows the first four
    ("What is 2 + 3?", "5", "Arithmetic", 1),
    ("What is 7 - 4?", "3", "Arithmetic", 1),
    ("Simplify 6/8.", "\\frac{3}{4}", "Algebra", 2),
    ("Solve x^2 = 9 for x > 0.", "3", "Algebra", 3),
    ("What is 10 / 4?", "2.5", "Arithmetic", 2),
    ("What is the sum of the roots of x^2 - 5x + 6?", "5", "Algebra", 3),
]
KNOWN = {
    "What is 2 + 3?": "5",
    "What is 7 - 4?": "3",
    "Simplify 6/8.": "0.75",
    "Solve x^2 = 9 for x > 0.": "x = 3",
}


def add_problems(db) -> None:
    with db.session() as s:
        for i, (text, answer, subject, level) in enumerate(PROBLEMS):
            s.add(
                Problem(
                    text=text,
                    answer=answer,
                    subject=subject,
                    difficulty=level,
                    source="tiny",
                    split="test",
                    content_hash=f"h{i}",
                )
            )
        s.commit()


def _llm_config(tmp_path, answers: dict[str, str]) -> str:
    lines = ["[roles.navigator]", 'backend = "scripted"', "[roles.navigator.answers]"]
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in answers.items()]
    path = tmp_path / "llm.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_majority_vote_uses_the_graders_normal_form():
    assert majority(["\\frac{1}{2}", "3", "\\dfrac{1}{2}"]) == "\\frac{1}{2}"
    assert majority([None, "4", None]) == "4" and majority([None]) is None


def test_eval_cli_on_a_few_problems(cli, db, tmp_path):
    add_templates(db)
    add_problems(db)
    out = tmp_path / "eval"
    result = cli(
        "eval",
        "--problems",
        "source=tiny",
        "--llm-config",
        _llm_config(tmp_path, KNOWN),
        "--best-of",
        "3",
        "--concurrency",
        "4",
        "--out",
        str(out),
        "--json",
    )
    report = json.loads(result.stdout)
    comparison = {r["method"].split(" ")[0]: r for r in report["comparison"]}
    assert set(comparison) == {"reasonflux", "single", "best-of-3"}
    rf = comparison["reasonflux"]
    assert rf["problems"] == 6 and rf["accuracy"] == pytest.approx(4 / 6, abs=1e-3)
    assert rf["llm_calls"] == 6 * 5 and rf["mean_rounds"] == 2
    assert comparison["single"]["llm_calls"] == 6 and comparison["best-of-3"]["llm_calls"] == 18
    assert comparison["single"]["accuracy"] == pytest.approx(4 / 6, abs=1e-3)
    assert comparison["best-of-3"]["pass_at_n"] == pytest.approx(4 / 6, abs=1e-3)
    assert rf["tokens"] > comparison["single"]["tokens"] > 0
    levels = {r["difficulty"]: r for r in report["by_difficulty"]}
    assert set(levels) == {1, 2, 3}
    assert levels[1]["accuracy"] == 1.0 and levels[2]["accuracy"] == 0.5 and levels[3]["problems"] == 2
    subjects = {r["subject"]: r["problems"] for r in report["by_subject"]}
    assert subjects == {"Algebra": 3, "Arithmetic": 3}

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["session_id"] and r["templates_used"] >= 1 for r in records)
    assert {r["problem_id"]: r["correct"] for r in records} == {
        r["problem_id"]: r["reference"] != "2.5" and "roots" not in PROBLEMS[r["problem_id"] - 1][0]
        for r in records
    }
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for name in ("summary.json", "comparison.csv", "by_difficulty.csv", "by_subject.csv"):
        assert (out / name).stat().st_size > 0
    with db.engine.connect() as conn:
        run_id = report["run_id"]
        assert (
            conn.execute(sa.text("SELECT status FROM pipeline_run WHERE id = :r"), {"r": run_id}).scalar()
            == "succeeded"
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM solve_session WHERE run_id = :r"), {"r": run_id}
            ).scalar()
            == 6
        )
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM llm_call WHERE run_id = :r AND stage = 'eval:baseline'"),
                {"r": run_id},
            ).scalar()
            == 6 + 18
        )

    table = cli(
        "eval",
        "--problems",
        "source=tiny;limit=2",
        "--navigator",
        "scripted",
        "--no-baseline",
        "--out",
        str(tmp_path / "e2"),
    ).stdout
    assert "reasonflux" in table and "by difficulty" in table and "single call" not in table
    assert (
        cli(
            "eval",
            "--problems",
            "source=nothing",
            "--navigator",
            "scripted",
            "--out",
            str(tmp_path / "e3"),
            expect=2,
        ).exit_code
        == 2
    )


@pytest.mark.shared_data
def test_eval_on_math500_sample(db, shared_data, tmp_path):
    from pipelines.problems import import_problems

    import_problems(db, shared_data / "math500_test.jsonl", preset="math500", embed=False)
    problems = load_problems(db, "source=math500;level=1-5;limit=8")
    assert len(problems) == 8
    # The scripted model knows the reference answers of half: the grader must accept MATH's LaTeX answers.
    answers = {p["text"]: p["answer"] for p in problems[::2]}
    backend = play_along_backend(answers)
    with Solver(db, backend, backend) as solver:
        report = run_eval(db, solver, problems, out_dir=tmp_path / "m", concurrency=4, best_of=0)
    assert report.comparison[0]["accuracy"] == pytest.approx(0.5)
    assert {r["subject"] for r in report.records} == {p["subject"] for p in problems}
    assert (tmp_path / "m" / "scaling.png").stat().st_size > 10_000


def _record(i: int, **fields):
    return {
        "problem_id": i,
        "difficulty": None,
        "subject": None,
        "source": None,
        "correct": i % 2 == 0,
        "rounds": 1 + i % 3,
        "templates_used": 1,
        "single_correct": i % 3 == 0,
        "best_of_correct": True,
        **fields,
    }


def test_the_figure_groups_by_level_else_subject_else_source_and_plots_the_baselines(tmp_path):
    from serve.eval import draw_scaling, scaling_series

    levels = [_record(i, difficulty=1 + i % 2, subject="Algebra") for i in range(6)]
    assert scaling_series(levels)["key"] == "difficulty"
    subjects = [_record(i, subject=["Algebra", "Geometry"][i % 2], source="math500") for i in range(6)]
    series = scaling_series(subjects, best_of=4)
    assert (series["key"], series["labels"], series["counts"]) == ("subject", ["Algebra", "Geometry"], [3, 3])
    # Each method's accuracy per group: solver (even ids), single call (ids 0 and 3 of 0-5), best-of-4.
    assert series["accuracy"] == {
        "reasonflux": [1.0, 0.0],
        "single call": [0.3333, 0.3333],
        "best-of-4 (majority vote)": [1.0, 1.0],
    }
    sources = [_record(i, source=["math500", "aime"][i % 2]) for i in range(4)]
    assert scaling_series(sources)["key"] == "source"
    assert "best-of" not in str(scaling_series(sources, best_of=0)["accuracy"])  # not run: not drawn
    bare = [_record(i) for i in range(3)]
    assert (scaling_series(bare)["labels"], scaling_series(bare)["counts"]) == (["all"], [3])
    for records in (subjects, bare):
        assert draw_scaling(records, tmp_path / "s.png", best_of=4).stat().st_size > 10_000
