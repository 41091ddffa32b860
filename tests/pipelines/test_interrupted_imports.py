"""A problem or template import killed while embedding leaves rows without vectors; the rerun completes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow  # each kills a real import midway and reruns it

ROOT = Path(__file__).resolve().parents[2]

# Runs the real CLI in a child that SIGKILLs itself on the embedder's second batch: the rows are committed,
# part of the vectors are not, exactly as after a kill -9 mid-import.
_KILLED_ON_SECOND_BATCH = """
import os, signal, sys
from kb.embeddings import Embedder
original, calls = Embedder.encode, []
def encode(self, texts, *a, **k):
    calls.append(len(texts))
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, texts, *a, **k)
Embedder.encode = encode
from kb.cli import cli
cli(sys.argv[1:], prog_name="reasonflux")
"""


def _killed_run(db, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": db.url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_ON_SECOND_BATCH, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)


def _scalar(db, sql: str):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def test_rerun_after_a_killed_problem_import_embeds_every_problem_of_the_file(cli, db, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(
            json.dumps({"problem": f"Compute {i} + {i * 7} and explain why.", "answer": str(8 * i)}) + "\n"
            for i in range(150)
        )
    )
    _killed_run(db, "problems", "import", str(path))
    assert _scalar(db, "SELECT count(*) FROM problem") == 150
    missing = (
        "SELECT count(*) FROM problem p WHERE NOT EXISTS (SELECT 1 FROM problem_embedding e "
        "WHERE e.problem_id = p.id AND e.model = 'all-MiniLM-L6-v2')"
    )
    assert 0 < _scalar(db, missing) < 150  # the first batch was stored, the rest was not

    again = json.loads(cli("problems", "import", str(path), "--json").stdout)
    assert (
        again["created"] == 0
        and again["existing"] == 150
        and again["embedded"]
        == _scalar(db, f"SELECT count(*) FROM problem_embedding WHERE run_id = {again['run_id']}")
    )
    assert _scalar(db, missing) == 0
    # A third run has nothing left to do.
    assert json.loads(cli("problems", "import", str(path), "--json").stdout)["embedded"] == 0


def test_rerun_after_no_embed_embeds_the_existing_problems(cli, db, tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text(
        "".join(json.dumps({"problem": f"How many divisors has {n}?"}) + "\n" for n in (12, 30, 64))
    )
    cli("problems", "import", str(path), "--no-embed")
    assert _scalar(db, "SELECT count(*) FROM problem_embedding") == 0
    assert json.loads(cli("problems", "import", str(path), "--json").stdout)["embedded"] == 3
    assert _scalar(db, "SELECT count(*) FROM problem_embedding") == 3


def test_rerun_after_a_killed_template_import_embeds_every_template(cli, db, tmp_path):
    lines = [
        {
            "name": f"Method {i}",
            "category": "Algebra",
            "description": f"Use identity number {i} to factor.",
            "steps": [f"Apply identity {i}", "Simplify"],
        }
        for i in range(100)
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # encode_views makes one encode call per batch of 64 templates' views (two views each): kill on the second.
    _killed_run(db, "import", "jsonl", str(path))
    assert _scalar(db, "SELECT count(*) FROM template") == 100
    missing = (
        "SELECT count(*) FROM template t WHERE NOT EXISTS (SELECT 1 FROM template_embedding e "
        "WHERE e.version_id = t.current_version_id)"
    )
    assert 0 < _scalar(db, missing) < 100
    again = json.loads(cli("import", "jsonl", str(path), "--json").stdout)
    assert again["unchanged"] == 100 and again["embedded"] > 0
    assert _scalar(db, missing) == 0
