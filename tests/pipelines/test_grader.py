"""The grader: answer extraction and equivalence on the forms MATH answers take."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.grader import GRADER_NAME, extract_answer, grade, grade_solution, normalize

ROOT = Path(__file__).resolve().parents[2]

EQUIVALENT = [
    ("\\frac12", "\\frac{1}{2}"),
    ("1/2", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "\\frac34"),
    ("\\tfrac{3}{4}", "0.75"),
    ("\\frac{9}{7}", "9/7"),
    ("-\\frac{1}{2}", "-0.5"),
    ("3.0", "3"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("2+\\sqrt{3}", "\\sqrt{3}+2"),
    ("[2,5)", "[2, 5)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("5\\text{ cm}", "5"),
    ("4\\text{ inches}", "4"),
    ("6\\text{ square units}", "6"),
    ("30^\\circ", "30"),
    ("30^{\\circ}", "30"),
    ("30 degrees", "30"),
    ("1,000", "1000"),
    ("10{,}000", "10000"),
    ("x = 3", "3"),
    ("x=3", "3"),
    ("y = -2", "-2"),
    ("\\!\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\frac{1}{\\,2}", "\\frac12"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{(C)}", "(C)"),
    ("50\\%", "50"),
    ("\\$32", "32"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\text{ 12 }", "12"),
    ("\\frac{14}{3}", "\\frac{28}{6}"),
    ("\\sqrt{50}", "5\\sqrt{2}"),
    ("\\frac{1}{4}", "0.25"),
    ("2\\pi", "\\pi \\cdot 2"),
    ("1.5", "\\frac{3}{2}"),
]
NOT_EQUIVALENT = [
    ("\\frac12", "\\frac13"),
    ("[2,5)", "(2,5)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("3", "-3"),
    ("x=3", "4"),
    ("\\sqrt2", "2"),
    ("1000", "100"),
    ("\\text{Evelyn}", "Bob"),
    ("(C)", "(D)"),
    ("0.5", "0.51"),
    ("1,001", "1,000"),
    ("3.14", "\\pi"),
    ("", "2"),
    ("2\\sqrt{3}", "\\sqrt{6}"),
    ("(1,2)", "(2,1)"),
    ("5\\text{ cm}", "6"),
    ("30^\\circ", "60"),
    ("\\frac{9}{7}", "\\frac{7}{9}"),
    ("x^2+1", "(x+1)^2"),
]


@pytest.mark.parametrize(("predicted", "reference"), EQUIVALENT)
def test_equivalent_forms_agree_both_ways(predicted, reference):
    assert grade(predicted, reference), (predicted, reference)
    assert grade(reference, predicted), (reference, predicted)


@pytest.mark.parametrize(("predicted", "reference"), NOT_EQUIVALENT)
def test_different_answers_disagree(predicted, reference):
    assert not grade(predicted, reference), (predicted, reference)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}. Double-check: \\boxed{3}", "3"),
        ("\\fbox{7}", "7"),
        ("nested \\boxed{\\frac{a^{2}}{b}} done", "\\frac{a^{2}}{b}"),
        ("\\boxed 5$ end", "5"),
        ("The final answer is $12$.", "12"),
        ("**Final Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("work...\nAnswer: 42", "42"),
        ("so the answer is 17.", "17"),
        ("no answer here", None),
        ("\\boxed{unbalanced", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_missing_answer_is_wrong_not_an_error():
    assert grade(None, "3") is False
    assert grade_solution("I give up", "3") == (None, False)
    assert grade_solution("thus $\\boxed{\\dfrac{6}{4}}$", "\\frac32") == ("\\dfrac{6}{4}", True)


def test_grading_works_off_the_main_thread():
    results = []
    t = threading.Thread(target=lambda: results.append(grade("0.5", "\\frac{1}{2}")))
    t.start()
    t.join()
    assert results == [True]


def test_normalize_strips_presentation_only():
    assert normalize("\\text{ 12 cm}") == "12"
    assert normalize("\\left[ 1, 2 \\right)") == "[1,2)"
    assert normalize("10{,}000") == "10000"
    assert GRADER_NAME


def _math500(shared_data):
    return [json.loads(line) for line in (shared_data / "math500_test.jsonl").read_text().splitlines()]


def test_every_math500_answer_grades_equal_to_itself_boxed(shared_data):
    failures = []
    for row in _math500(shared_data):
        text = f"Let us work it out.\nHence the result is $\\boxed{{{row['answer']}}}$."
        extracted, ok = grade_solution(text, row["answer"])
        if extracted != row["answer"].strip() or not ok:
            failures.append((row["unique_id"], row["answer"], extracted))
    assert failures == []


def test_every_math500_reference_solution_grades_correct(shared_data):
    failures = [
        (row["unique_id"], row["answer"], extract_answer(row["solution"]))
        for row in _math500(shared_data)
        if not grade_solution(row["solution"], row["answer"])[1]
    ]
    assert failures == []


def test_math500_answers_of_different_problems_disagree(shared_data):
    rows = _math500(shared_data)
    rng = random.Random(4)
    pairs = [tuple(rng.sample(rows, 2)) for _ in range(150)]
    # Different problems can share an answer; those pairs are not negatives.
    pairs = [(a["answer"], b["answer"]) for a, b in pairs if normalize(a["answer"]) != normalize(b["answer"])]
    assert len(pairs) > 100
    assert [p for p in pairs if grade(p[0], p[1])] == []


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """CODE in a fresh interpreter; a hang fails the test through the timeout instead of stalling it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=180, check=False
    )


def test_a_pathological_answer_is_graded_wrong_instead_of_hanging():
    # Off the main thread (as in solve and eval), where math-verify cannot set its own alarm; the tower's
    # check runs past the deadline, its worker is killed, and the next grade gets a fresh one.
    proc = _python(
        "import json, threading\n"
        "from pipelines.grader import grade\n"
        "out = []\n"
        "def work():\n"
        "    out.append(grade('9^9^9^9^9', '1', timeout_s=2))\n"
        "    out.append(grade('9^{9^{9^{9}}}', '1', timeout_s=2))\n"
        "    out.append(grade('\\\\frac{1}{2}', '0.5'))\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "print(json.dumps(out))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, False, True]
    assert "Timeout is disabled" not in proc.stderr


@pytest.mark.slow
def test_a_command_that_grades_prints_no_math_verify_noise(db):
    # "0" against "\frac{0}{1}" differ as strings, so the symbolic check (math-verify) decides.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kb.cli",
            "solve",
            "What is 0 times 7?",
            "--navigator",
            "scripted",
            "--reference",
            "\\frac{0}{1}",
            "--retrieval-mode",
            "text",  # no embedding model to load: the grading is what this test is about
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": db.url},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["correct"] is True
    assert "Timeout is disabled" not in proc.stdout + proc.stderr
