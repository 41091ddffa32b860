"""The one run lifecycle (kb/runs.py): kill -9 and SIGTERM of a stage, leases across hosts, one resume per
training run, and the exit codes of stages whose work failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from kb import runs
from kb.errors import ConflictError
from pipelines.problems import import_problems
from pipelines.train import training_runs
from tests.support.llm_server import LocalLLM, dead_url

ROOT = Path(__file__).resolve().parents[2]


def q(db, sql, **kw):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql), kw).all()


def add_problems(db, tmp_path, n=2):
    rows = [
        {
            "problem": f"Problem {i}: what is {i} + {i}?",
            "solution": "s",
            "answer": str(2 * i),
            "subject": "Algebra",
            "level": 1,
            "unique_id": f"p/{i}",
        }
        for i in range(n)
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)


def plan_reply(body):
    from pipelines import navigator

    return navigator.render_plan("Add the two numbers.", [("Add them", "addition")])


def _start_sample(db, url: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kb.cli",
            "--database-url",
            db.url,
            "sample",
            "--problems",
            "all",
            "--n",
            "1",
            "--hint-k",
            "0",
            "--max-attempts",
            "1",
            "--navigator",
            f"openai:m@{url}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_stage_is_marked_interrupted_by_the_next_command_and_resumes(db, cli, tmp_path, sig):
    add_problems(db, tmp_path)
    slow = LocalLLM(reply=plan_reply, delay_s=60)
    proc = _start_sample(db, slow.url)
    try:
        assert slow.started.wait(60), proc.stderr.read() if proc.poll() is not None else "no request"
        proc.send_signal(sig)
        code = proc.wait(30)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        slow.close()
    [(run_id, status, error)] = q(db, "SELECT id, status, error FROM pipeline_run WHERE stage = 'sample'")
    if sig == signal.SIGTERM:  # handled like Ctrl-C: the process records it itself and exits 143
        assert code == 143 and "terminated (SIGTERM)" in stderr
        assert (status, error) == ("interrupted", "terminated (SIGTERM)")
    else:  # nobody recorded anything: the next command that opens the KB does
        assert code == -9 and status == "running"
        out = cli("runs", "list", "--json")
        assert f"marked pipeline run {run_id} interrupted" in out.stderr
        [row] = [r for r in json.loads(out.stdout) if r["stage"] == "sample"]
        assert row["status"] == "interrupted"
        assert (
            "its process on this host is gone"
            in q(db, "SELECT error FROM pipeline_run WHERE stage = 'sample'")[0][0]
        )
    # resuming is running the same command again: the units of the same parameters are picked up
    fast = LocalLLM(reply=plan_reply)
    try:
        proc = _start_sample(db, fast.url)
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        fast.close()
    assert q(db, "SELECT status FROM pipeline_run WHERE stage = 'sample' ORDER BY id") == [
        ("interrupted",),
        ("succeeded",),
    ]
    assert q(db, "SELECT count(*) FROM trajectory")[0][0] == 2


def test_a_run_whose_lease_ran_out_on_another_host_is_interrupted_and_a_live_one_is_not(db):
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts, host, pid, heartbeat_at) VALUES "
                "('sample', '{}', '', 'running', '{}', 'other-host', 1, now() - interval '1 hour'), "
                "('sample', '{}', '', 'running', '{}', 'other-host', 1, now())"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO training_run (stage, base_model, config, code_version, status, metrics, host, pid, "
                "heartbeat_at) VALUES ('sft', 'm', '{}', '', 'running', '{}', 'other-host', 1, "
                "now() - interval '1 hour')"
            )
        )
    assert runs.mark_orphaned_runs(db) == {"pipeline": [1], "training": [1]}
    assert q(db, "SELECT id, status FROM pipeline_run ORDER BY id") == [(1, "interrupted"), (2, "running")]
    assert "no heartbeat for" in q(db, "SELECT error FROM training_run")[0][0]
    assert runs.mark_orphaned_runs(db) == {}  # nothing more to do; the live run keeps running


def test_the_owner_renews_its_lease_while_the_run_is_open(db):
    with runs.pipeline_run(db, "toy") as (run_id, _):
        first = q(db, "SELECT heartbeat_at FROM pipeline_run")[0][0]
        with runs.Heartbeat(db, "pipeline", run_id, interval_s=0.05):
            time.sleep(0.5)
        assert q(db, "SELECT heartbeat_at FROM pipeline_run")[0][0] > first
        assert runs.mark_orphaned_runs(db, lease_s=60) == {}  # our own pid is alive
    assert q(db, "SELECT status FROM pipeline_run") == [("succeeded",)]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_training_run_is_interrupted_and_can_be_resumed_only_once(db):
    run_id = training_runs.start_run(
        db, stage="sft", base_model="m", dataset_version_id=None, config={}, output_path="/nonexistent/run"
    )
    with db.engine.begin() as conn:  # its owner was killed with SIGKILL on this host
        conn.execute(
            sa.text("UPDATE training_run SET pid = :p WHERE id = :r"), {"p": _dead_pid(), "r": run_id}
        )
    assert runs.mark_orphaned_runs(db) == {"training": [run_id]}
    # (resumable would now look for the checkpoint; that is covered by test_train_registry)
    second = training_runs.start_run(
        db,
        stage="sft",
        base_model="m",
        dataset_version_id=None,
        config={},
        output_path="/nonexistent/run",
        resumed_from=run_id,
    )
    with pytest.raises(ConflictError, match=f"already resumed by run {second}"):
        training_runs.resumable(db, run_id, "sft")
    with pytest.raises(ConflictError, match="just been resumed"):  # two resumes racing: the index decides
        training_runs.start_run(
            db,
            stage="sft",
            base_model="m",
            dataset_version_id=None,
            config={},
            output_path="/nonexistent/run",
            resumed_from=run_id,
        )


# ------------------------------------------------------------------ failures exit non-zero


def test_a_stage_whose_every_unit_failed_is_failed_and_exits_5_with_the_reason(db, cli, tmp_path):
    add_problems(db, tmp_path)
    dead = tmp_path / "dead.toml"  # no backoff between connection attempts: the failure is the point
    dead.write_text(
        f'[roles.navigator]\nbackend = "openai"\nmodel = "m"\nbase_url = "{dead_url()}"\nmax_retries = 0\n'
    )
    out = cli(
        "sample",
        "--problems",
        "all",
        "--n",
        "1",
        "--hint-k",
        "0",
        "--max-attempts",
        "1",
        "--llm-config",
        str(dead),
        "--json",
        expect=5,
    )
    assert "failed: 2 of 2 units failed; first reasons: " in out.stderr and "ConnectError" in out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == "failed" and result["units_done"] == 0
    assert q(db, "SELECT status FROM pipeline_run WHERE stage = 'sample'") == [("failed",)]
    # running it again changes nothing: still failed, still exit 5, until --retry-failed succeeds
    cli(
        "sample",
        "--problems",
        "all",
        "--n",
        "1",
        "--hint-k",
        "0",
        "--llm-config",
        str(dead),
        expect=5,
    )
    ok = LocalLLM(reply=plan_reply)
    try:
        cli(
            "sample",
            "--problems",
            "all",
            "--n",
            "1",
            "--hint-k",
            "0",
            "--retry-failed",
            "--navigator",
            f"openai:m@{ok.url}",
        )
    finally:
        ok.close()


def test_a_stage_with_some_units_failed_exits_6(db, cli, tmp_path):
    add_problems(db, tmp_path, n=3)
    flaky = LocalLLM(
        reply=lambda body: plan_reply(body) if "Problem 1" not in json.dumps(body) else "no plan"
    )
    try:
        out = cli(
            "sample",
            "--problems",
            "all",
            "--n",
            "1",
            "--hint-k",
            "0",
            "--batch-size",
            "1",
            "--navigator",
            f"openai:m@{flaky.url}",
            expect=6,
        )
    finally:
        flaky.close()
    assert "partly failed: 1 of 3 units failed" in out.stderr
    assert q(db, "SELECT status FROM pipeline_run WHERE stage = 'sample'") == [("succeeded",)]


def test_serve_stops_on_sigterm_like_ctrl_c(db):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kb.cli",
            "--database-url",
            db.url,
            "serve",
            "--port",
            str(port),
            "--navigator",
            "scripted",
            "--retrieval-mode",
            "text",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/healthz", params={"backends": "false"}).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code == 143 and "terminated (SIGTERM)" in proc.stderr.read()
