"""A real third-party OpenAI-compatible server: llama-cpp-python's, serving SmolLM2-135M-Instruct (GGUF).

One server for the module on 127.0.0.1 (a free port), started with a deadline and killed at the end. The
commands a new user runs go through it: `llm check`, `sample` with structured output (the server takes
`{"type": "json_object", "schema": ...}`, found by the backend's one fallback), `rollouts`, `solve`, and
`serve` in front of it, driven by the `openai` client. Skips with the reason where `llama_cpp` is not
importable (`.ci/run` installs it from ../shared/wheels) or the model cannot be fetched.

Speed on two shared cores: the server runs one thread (llama.cpp's threads spin-wait for each other; with
two threads on a busy two-core machine a token took 0.6 s instead of 0.05 s) and requests are kept short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.real_model import free_port, llama_cpp_server, smollm2_gguf, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
ALIAS = "smollm2"
START_TIMEOUT_S = 120
PLAN_TOKENS = 200  # a plan of SmolLM2's is 50-150 tokens of JSON
PROBLEMS = [  # toy-world word problems: short prompts
    {
        "problem": "A baker puts 23 rolls on a tray that already holds 5 rolls. How many rolls are on the tray now?",
        "answer": "28",
        "unique_id": "toy/1",
    },
    {
        "problem": "A shop had 41 lamps and sold 6 of them. How many lamps are left in the shop?",
        "answer": "35",
        "unique_id": "toy/2",
    },
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """The base URL (…/v1) of llama-cpp-python's server on the SmolLM2 GGUF."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # one thread: on two cores it is faster than two (the tests' own processes need the other)
    with llama_cpp_server(
        smollm2_gguf(), ALIAS, log, "--n_threads", "1", start_timeout_s=START_TIMEOUT_S
    ) as url:
        yield url


@pytest.fixture
def llm_config(llama_server, tmp_path) -> Path:
    """Both roles on the server; the navigator with structured output in the server's own dialect."""
    path = tmp_path / "llm.toml"
    role = f'backend = "openai"\nmodel = "{ALIAS}"\nbase_url = "{llama_server}"\ntimeout_s = 300\nmax_concurrency = 2\n'
    path.write_text(
        f"[roles.navigator]\n{role}structured_output = true\n"
        f"[roles.navigator.sampling]\ntemperature = 0.3\nmax_tokens = {PLAN_TOKENS}\n"
        f"[roles.inference]\n{role}[roles.inference.sampling]\ntemperature = 0.0\nmax_tokens = 48\n"
    )
    return path


@pytest.fixture
def toy_problems(cli, tmp_path) -> None:
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    cli("problems", "import", str(path), "--preset", "math500", "--no-embed")


def q(db, sql: str, **params):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_llm_check_answers(cli, llama_server):
    out = cli("llm", "check", "--navigator", f"openai:{ALIAS}@{llama_server}", "--json")
    [row] = json.loads(out.stdout)
    assert row["ok"] is True and row["model"] == ALIAS and row["reply"], row


def test_sample_with_structured_output_then_evaluate(cli, db, llm_config, toy_problems):
    # The toy world's plan request (at most toy_world.MAX_STEPS = 2 steps): a 135M model's plans stay short.
    out = cli(
        "sample",
        "--problems",
        "ids=1",
        "--n",
        "8",
        "--hint-k",
        "0",
        "--max-steps",
        "2",
        "--llm-config",
        str(llm_config),
        "--json",
    )
    counts = json.loads(out.stdout)
    reasons = q(db, "SELECT reason FROM failure")
    assert counts["trajectories_written"] >= 7, (counts, reasons)  # plans that parse, of 8
    calls = q(db, "SELECT params->>'structured_output', error FROM llm_call WHERE stage = 'sample'")
    assert len(calls) == 8 and all(c == ("json_object", None) for c in calls), calls

    out = cli("rollouts", "--trajectories", "limit=2", "--llm-config", str(llm_config), "--json")
    counts = json.loads(out.stdout)
    rollouts = q(db, "SELECT count(*), count(*) FILTER (WHERE output <> '') FROM rollout")
    assert rollouts == [(2, 2)], (counts, rollouts)
    assert q(db, "SELECT status FROM pipeline_run WHERE stage = 'evaluate'") == [("succeeded",)]


def test_solve(cli, db, llm_config):
    out = cli(
        "solve",
        "A shop had 41 lamps and sold 6 of them. How many lamps are left in the shop?",
        "--llm-config",
        str(llm_config),
        "--max-rounds",
        "1",
        "--max-steps",
        "2",
        "--plan-hints",
        "0",
        "--parse-retries",
        "0",
        "--retrieval-mode",
        "text",
        "--timeout",
        "300",
        "--json",
        expect=None,
    )
    [(session_id, status, rounds)] = q(db, "SELECT id, status, rounds FROM solve_session")
    assert status in ("solved", "failed", "limit"), (status, out.stdout, out.stderr)
    assert out.exit_code in (0, 5), (out.exit_code, out.stdout, out.stderr)  # 5: the session did not solve it
    calls = q(
        db,
        "SELECT params->'tags'->>'role', params->>'structured_output', error FROM llm_call "
        "WHERE session_id = :s ORDER BY id",
        s=session_id,
    )
    # The server answered every call; the navigator's were constrained in the dialect it takes.
    assert calls and calls[0][0] == "navigator" and all(c[2] is None for c in calls), calls
    assert {c[1] for c in calls if c[0] == "navigator"} == {"json_object"}, calls
    if rounds:  # the plan parsed and a round ran: the inference role was called through the server too
        assert any(c[0] == "inference" for c in calls), calls


def test_serve_in_front_of_it(db, llm_config):
    import openai

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": db.url}
    log = llm_config.parent / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kb.cli",
                "serve",
                "--port",
                str(port),
                "--llm-config",
                str(llm_config),
                "--retrieval-mode",
                "text",
                "--max-rounds",
                "1",
                "--max-steps",
                "2",
                "--plan-hints",
                "0",
                "--parse-retries",
                "0",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz?backends=false", proc, log, START_TIMEOUT_S)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300
        )
        resp = client.chat.completions.create(
            model="reasonflux",
            messages=[
                {
                    "role": "user",
                    "content": "A baker puts 23 rolls on a tray that already holds 5 rolls. "
                    "How many rolls are on the tray now?",
                }
            ],
        )
        # "length": the session hit its one-round limit, which a 135M model usually does.
        assert resp.choices[0].finish_reason in ("stop", "length") and resp.usage.total_tokens > 0
        session_id = resp.model_extra["reasonflux"]["session_id"]
        calls = q(db, "SELECT backend, model, error FROM llm_call WHERE session_id = :s", s=session_id)
        assert calls and all(c == ("openai", ALIAS, None) for c in calls), calls
    finally:
        stop(proc)
