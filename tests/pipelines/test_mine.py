"""Template mining with the scripted backend: dedupe/version/create, strict parsing, bounded retries, kill -9."""

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

from pipelines.llm import create_backend
from pipelines.llm.config import RoleConfig
from pipelines.mine import mine
from pipelines.problems import import_problems

ROOT = Path(__file__).resolve().parents[2]


def template_json(
    name: str, description: str = "Solve a quadratic by factoring it into linear factors.", **over
) -> str:
    data = {
        "name": name,
        "type": "technique",
        "tags": ["algebra", "quadratics"],
        "description": description,
        "scope": "A polynomial equation of degree two with integer roots.",
        "steps": ["Move every term to one side.", "Factor into linear factors.", "Set each factor to zero."],
        "example": {"problem": "Solve x^2-5x+6=0.", "solution": "(x-2)(x-3)=0", "answer": "2, 3"},
    }
    data.update(over)
    return json.dumps(data)


def odd_ones() -> str:
    """A second method, distinct from template_json's factoring in every embedded field, not only its name
    (mining compares the whole version text: kb.template_vectors.content_views)."""
    return template_json(
        "Odd ones",
        "Complete the square to solve a quadratic whose middle coefficient is odd.",
        tags=["algebra", "completing the square"],
        scope="A quadratic equation that does not factor over the integers.",
        steps=[
            "Divide by the leading coefficient.",
            "Add the square of half the middle coefficient.",
            "Take square roots of both sides.",
        ],
        example={"problem": "Solve x^2+3x+1=0.", "solution": "(x+3/2)^2=5/4", "answer": "(-3±√5)/2"},
    )


def write_problems(path: Path, n: int) -> Path:
    rows = [
        {
            "problem": f"Problem number {i}: solve x^2 - {i + 3}x + {i + 2} = 0.",
            "solution": f"Factor: (x-1)(x-{i + 2}) = 0, so the roots are 1 and {i + 2}.",
            "answer": f"1, {i + 2}",
            "subject": "Algebra",
            "level": 2,
            "unique_id": f"t/{i}",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(db, tmp_path, n=4) -> list[int]:
    import_problems(db, write_problems(tmp_path / "p.jsonl", n), preset="math500", embed=False)
    return [r[0] for r in q(db, "SELECT id FROM problem ORDER BY source_id")]


def by_problem(replies: dict[int, object]):
    """A scripted reply chosen by the problem number in the prompt."""

    def reply(messages):
        i = int(re.search(r"Problem number (\d+)", messages[1]["content"]).group(1))
        r = replies[i]
        if isinstance(r, list):
            attempt = sum(1 for m in messages if m["role"] == "assistant")
            return r[min(attempt, len(r) - 1)]
        return r

    return reply


def q(db, sql, **kw):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql), kw).all()


def test_mining_creates_versions_and_drops_duplicates(db, tmp_path):
    ids = load(db, tmp_path, 4)
    backend = create_backend(
        "scripted",
        rules=[
            (
                "Reference solution",
                by_problem(
                    {
                        0: template_json("Factor the quadratic"),
                        1: template_json("Factor the quadratic"),  # identical: dropped
                        2: template_json(
                            "Factor the quadratic",
                            description="Factor a degree-two polynomial, then read off "
                            "the roots; check them by Vieta's formulas.",
                        ),  # same name, new content: new version
                        3: template_json(
                            "Telescoping sums",
                            description="Rewrite each term as a difference so that the sum "
                            "collapses to its first and last parts.",
                            tags=["sequences"],
                            scope="A finite sum whose terms are differences of consecutive values.",
                        ),
                    }
                ),
            )
        ],
    )
    out = mine(db, f"ids={min(ids)}-{max(ids)}", backend, batch_size=2)
    assert (out["units_done"], out["units_failed"]) == (4, 0)
    assert (out["templates_created"], out["templates_versioned"], out["templates_identical"]) == (2, 1, 1)
    templates = q(db, "SELECT t.key, t.current_version_no FROM template t ORDER BY t.id")
    assert templates == [("Algebra/Mined/Factor the quadratic", 2), ("Algebra/Mined/Telescoping sums", 1)]
    versions = q(db, "SELECT v.source_kind, v.run_id, v.provenance FROM template_version v ORDER BY v.id")
    assert all(v.source_kind == "run" and v.run_id == out["run_id"] for v in versions)
    assert sorted(v.provenance["problems"][0] for v in versions) == sorted([ids[0], ids[2], ids[3]])
    # Every mined version is embedded, so the next unit (or run) dedupes against it.
    assert q(db, "SELECT count(*) FROM template_embedding")[0][0] == 3
    assert q(db, "SELECT count(*), count(DISTINCT run_id) FROM llm_call WHERE stage = 'mine'")[0] == (4, 1)
    # Rerun: nothing left to do, no new call.
    again = mine(db, f"ids={min(ids)}-{max(ids)}", backend)
    assert again["units_done"] == 0 and q(db, "SELECT count(*) FROM llm_call")[0][0] == 4


def test_every_failure_path_is_recorded_and_retries_are_bounded(db, tmp_path):
    ids = load(db, tmp_path, 4)
    backend = create_backend(
        "scripted",
        rules=[
            (
                "Reference solution",
                by_problem(
                    {
                        0: ["not json at all", template_json("Recovered after repair")],
                        1: ['{"name": "truncated", "type": '],
                        2: [template_json("Bad tags", tags="algebra")],
                        3: [template_json("Extra key", evil="__import__('os').system('true')")],
                    }
                ),
            )
        ],
    )
    out = mine(db, "all", backend, max_retries=2)
    assert (out["units_done"], out["units_failed"], out["templates_created"]) == (1, 3, 1)
    fails = q(db, "SELECT unit_key, attempt, reason, raw_output FROM failure ORDER BY id")
    by_unit: dict[str, list] = {}
    for f in fails:
        by_unit.setdefault(f.unit_key, []).append(f)
    assert [f.reason for f in by_unit[f"problem:{ids[0]}"]] == ["attempt 1: no JSON object in the output"]
    assert by_unit[f"problem:{ids[0]}"][0].raw_output == "not json at all"
    for i, needle in ((1, "invalid JSON"), (2, "schema violation at tags"), (3, "schema violation")):
        rows = by_unit[f"problem:{ids[i]}"]
        assert [f.attempt for f in rows] == [1, 2, 3]  # max_retries=2: three attempts, then it gives up
        assert all(needle in f.reason for f in rows) and "gave up after 3 attempts" in rows[-1].reason
        assert all(f.raw_output for f in rows)
    calls = dict(q(db, "SELECT params->'tags'->>'unit', count(*) FROM llm_call GROUP BY 1"))
    assert calls == {
        f"problem:{ids[0]}": 2,
        f"problem:{ids[1]}": 3,
        f"problem:{ids[2]}": 3,
        f"problem:{ids[3]}": 3,
    }
    status = dict(q(db, "SELECT unit_key, status FROM work_unit"))
    assert sorted(status.values()) == ["done", "failed", "failed", "failed"]


def test_mining_real_math500_problems(db, shared_data, tmp_path):
    lines = (shared_data / "math500_test.jsonl").read_text().splitlines()[:5]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    import_problems(db, tmp_path / "m.jsonl", preset="math500", embed=False)
    names = iter(
        [
            "Polar coordinates",
            "Double sums by diagonals",
            "Evaluate a rational function",
            "Count divisors",
            "Compare averages",
        ]
    )
    backend = create_backend(
        "scripted", rules=[("Reference solution", lambda m: template_json(next(names), tags=["math500"]))]
    )
    out = mine(db, "source=math500;limit=5", backend)
    assert out["units_done"] == 5
    rows = q(db, "SELECT v.name, v.provenance->'problems'->>0 FROM template_version v ORDER BY v.id")
    assert len(rows) == out["templates_created"] + out["templates_versioned"] and len(rows) >= 1


_KILL_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    from kb.db import Database, create_engine
    from pipelines.llm.config import RoleConfig
    from pipelines.mine import mine
    from test_mine import odd_ones, template_json
    db = Database(url={url!r}, embedded=False, engine=create_engine({url!r}))
    role = RoleConfig("scripted", {{"rules": [["Problem number (1|3|5|7|9|11)", odd_ones()],
                                              ["Reference solution", template_json("Factor the quadratic")]],
                                   "latency_s": 0.3}})
    mine(db, "all", role, batch_size=1)
""")


@pytest.mark.slow
def test_kill_minus_9_mid_mining_then_rerun(db, tmp_path):
    load(db, tmp_path, 12)
    script = _KILL_SCRIPT.format(tests=str(ROOT / "tests" / "pipelines"), url=db.url)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while q(db, "SELECT count(*) FROM work_unit WHERE status = 'done'")[0][0] < 3:
            if proc.poll() is not None:
                pytest.fail(f"mining ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            assert time.time() < deadline, "no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = q(db, "SELECT count(*) FROM work_unit WHERE status = 'done'")[0][0]
    assert 3 <= done_before < 12
    role = RoleConfig(
        "scripted",
        {
            "rules": [
                ["Problem number (1|3|5|7|9|11)", odd_ones()],
                ["Reference solution", template_json("Factor the quadratic")],
            ],
            "latency_s": 0.3,
        },
    )
    out = mine(db, "all", role, batch_size=4)
    assert out["units_done"] == 12 - done_before
    assert q(db, "SELECT status, count(*) FROM work_unit GROUP BY 1") == [("done", 12)]
    # Two distinct methods, each stored once; every other unit was identical to one of them.
    assert q(db, "SELECT count(*), count(DISTINCT key) FROM template")[0] == (2, 2)
    assert q(db, "SELECT count(*) FROM template_version")[0][0] == 2
    calls = q(db, "SELECT count(*) FROM llm_call")[0][0]
    assert 12 <= calls <= 13  # at most the one call in flight at the kill is repeated


def test_mine_and_runs_commands(cli, db, tmp_path):
    load(db, tmp_path, 2)
    cfg = tmp_path / "llm.toml"
    reply = json.dumps(template_json("Factor the quadratic"))
    cfg.write_text(
        f'[roles.miner]\nbackend = "scripted"\nrules = [["Problem number 0", {reply}], ["Reference", '
        f'"nonsense"]]\n[roles.miner.sampling]\nmax_tokens = 99\n'
    )
    mined = cli(
        "mine", "--problems", "all", "--llm-config", str(cfg), "--max-retries", "1", "--json", expect=6
    )
    assert "mine run 2 partly failed: 1 of 2 units failed; first reasons: attempt 1: no JSON" in mined.stderr
    out = json.loads(mined.stdout)
    assert (out["units_done"], out["units_failed"], out["templates_created"]) == (1, 1, 1)
    assert q(db, "SELECT DISTINCT (params->>'max_tokens')::int FROM llm_call") == [(99,)]
    runs = json.loads(cli("runs", "list", "--stage", "mine", "--json").stdout)
    assert [(r["id"], r["stage"], r["status"], r["failures"], r["llm_calls"]) for r in runs] == [
        (out["run_id"], "mine", "succeeded", 2, 3)
    ]
    shown = json.loads(cli("runs", "show", str(out["run_id"]), "--json").stdout)
    assert shown["rows_written"]["template_version"] == 1 and shown["llm_calls"]["calls"] == 3
    assert shown["units_now"] == {"done": 1, "failed": 1}
    assert (
        "invalid JSON" in shown["failures_by_reason"][0]["reason"]
        or "no JSON" in shown["failures_by_reason"][0]["reason"]
    )
    assert "no pipeline run 999" in cli("runs", "show", "999", expect=1).output
    bad = cli("mine", "--miner", "gpt9:x", expect=2).output
    assert "unknown LLM backend 'gpt9'" in bad


def test_successful_solve_sessions_are_mined_too(db, tmp_path):
    ids = load(db, tmp_path, 1)
    with db.engine.begin() as conn:
        sids = (
            conn.execute(
                sa.text(
                    "INSERT INTO solve_session (problem_id, problem_text, config, status, correct, tokens, rounds, latency_ms) VALUES "
                    "(:p, 't', '{}', 'solved', true, '{}', 1, 0), (:p, 't', '{}', 'failed', false, '{}', 1, 0) RETURNING id"
                ),
                {"p": ids[0]},
            )
            .scalars()
            .all()
        )
        conn.execute(
            sa.text(
                "INSERT INTO solve_round (session_id, round_no, kind, step_text, instantiation, navigator_prompt, "
                "retrieved, adjustment, tokens, latency_ms) VALUES (:s, 1, 'step', 'Factor it', "
                "'Session work: (x-1)(x-2)', '[]', '[]', '{}', '{}', 0)"
            ),
            {"s": sids[0]},
        )
    seen = []

    def reply(messages):
        seen.append(messages[1]["content"])
        if "Session work" in messages[1]["content"]:
            return template_json(
                "Complete the square",
                tags=["completing the square"],
                description="Rewrite a quadratic as a perfect square plus a constant, then take "
                "square roots of both sides.",
                scope="A quadratic that does not factor over the integers.",
                # Its own method: candidates are compared by the embedded text of a version, steps included.
                steps=[
                    "Divide by the leading coefficient.",
                    "Add the square of half the linear coefficient to both sides.",
                    "Take square roots of both sides and solve for x.",
                ],
            )
        return template_json("Factor the quadratic")

    out = mine(db, "all", create_backend("scripted", rules=[("Reference solution", reply)]))
    assert out["units_done"] == 2  # the reference solution and the solved session; not the failed session
    assert sum("Session work: (x-1)(x-2)" in s for s in seen) == 1
    rows = q(
        db, "SELECT v.name, v.provenance->>'session_id', v.source_ref FROM template_version v ORDER BY v.id"
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("Factor the quadratic", None),
        ("Complete the square", str(sids[0])),
    ]
    assert rows[1][2].endswith(f"session:{sids[0]}")
