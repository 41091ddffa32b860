"""The unit-claiming runner: shared work without duplicates, kill -9 recovery, bounded retries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.runner import Outcome, Unit, run_stage
from pipelines.work_queue import claim, enqueue, unit_scope

ROOT = Path(__file__).resolve().parents[2]


class ToyHandler:
    """Writes one llm_call row per unit (model = unit key): duplicates would show as repeated keys."""

    stage = "toy"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def process(self, units: list[Unit]) -> list[Outcome]:
        time.sleep(self.delay_s)
        if any(u.payload.get("boom") for u in units):
            raise RuntimeError("handler exploded")
        return [
            Outcome(status="failed", failures=[{"reason": "unparseable", "raw_output": "{{"}])
            if u.payload.get("bad")
            else Outcome(data=u.key)
            for u in units
        ]

    def write(self, conn, unit, outcome, run_id):
        conn.execute(
            sa.text(
                "INSERT INTO llm_call (run_id, stage, backend, model, messages, params, prompt_tokens, "
                "completion_tokens, latency_ms) VALUES (:r, 'toy', 'toy', :k, '[]', '{}', 0, 0, 0)"
            ),
            {"r": run_id, "k": outcome.data},
        )
        return {"rows_written": 1}


def make_toy(db, run_id, delay_s=0.0):
    return ToyHandler(delay_s)


def _units(n, **payload):
    return [(f"u{i:03d}", dict(payload)) for i in range(n)]


def _results(db):
    with db.engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT model FROM llm_call WHERE stage = 'toy'")).scalars().all()
        status = dict(conn.execute(sa.text("SELECT status, count(*) FROM work_unit GROUP BY status")).all())
    return keys, status


def test_runs_all_units_once_and_reruns_do_nothing(db):
    params = {"what": "toy"}
    first = run_stage(db, stage="toy", params=params, units=_units(10), factory=make_toy, batch_size=3)
    assert first["units_done"] == 10 and first["rows_written"] == 10 and first["units_enqueued"] == 10
    again = run_stage(db, stage="toy", params=params, units=_units(12), factory=make_toy)
    assert again["units_enqueued"] == 2 and again["units_done"] == 2
    keys, status = _results(db)
    assert sorted(keys) == [f"u{i:03d}" for i in range(12)]
    assert status == {"done": 12}
    with db.engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT stage, status, counts FROM pipeline_run ORDER BY id")).all()
    assert [(r.stage, r.status) for r in runs] == [("toy", "succeeded"), ("toy", "succeeded")]
    assert runs[1].counts["units_total"] == 12


def test_other_params_are_another_scope():
    assert unit_scope("toy", {"n": 8}) != unit_scope("toy", {"n": 4})
    assert unit_scope("toy", {"a": 1, "b": 2}) == unit_scope("toy", {"b": 2, "a": 1})


def test_failures_are_recorded_and_retries_bounded(db):
    units = _units(3) + [("bad", {"bad": True}), ("boom", {"boom": True})]
    out = run_stage(db, stage="toy", params={}, units=units, factory=make_toy, batch_size=1, max_attempts=2)
    assert out["units_done"] == 3 and out["units_failed"] == 2
    with db.engine.connect() as conn:
        fails = conn.execute(
            sa.text("SELECT unit_key, attempt, reason, raw_output FROM failure ORDER BY id")
        ).all()
        status = dict(conn.execute(sa.text("SELECT unit_key, status FROM work_unit")).all())
    assert [(f.unit_key, f.reason) for f in fails if f.unit_key == "bad"] == [("bad", "unparseable")]
    assert [f.attempt for f in fails if f.unit_key == "boom"] == [1, 2]  # bounded: two attempts, then failed
    assert all("handler exploded" in f.reason for f in fails if f.unit_key == "boom")
    assert status["bad"] == status["boom"] == "failed"
    # A rerun does not retry failed units unless asked to.
    rerun = run_stage(db, stage="toy", params={}, units=units, factory=make_toy)
    assert rerun["units_done"] == 0 and rerun["units_failed"] == 0
    retried = run_stage(
        db, stage="toy", params={}, units=units, factory=make_toy, retry_failed=True, max_attempts=1
    )
    assert retried["units_reset"] == 2 and retried["units_failed"] == 2


def test_skip_locked_claims_never_overlap(db):
    scope = unit_scope("toy", {})
    with db.engine.begin() as conn:
        enqueue(conn, "toy", scope, _units(6), None)
    with db.engine.connect() as a, db.engine.connect() as b:
        ta, tb = a.begin(), b.begin()
        got_a = claim(a, "toy", scope, "A", 4, lease_s=60, max_attempts=3)
        got_b = claim(b, "toy", scope, "B", 4, lease_s=60, max_attempts=3)  # not blocked by A's locks
        assert len(got_a) == 4 and len(got_b) == 2
        assert not {u.key for u in got_a} & {u.key for u in got_b}
        ta.commit()
        tb.commit()


def test_stale_claims_are_taken_over_after_the_lease(db):
    scope = unit_scope("toy", {})
    with db.engine.begin() as conn:
        enqueue(conn, "toy", scope, _units(2), None)
        assert len(claim(conn, "toy", scope, "ghost:1:x", 2, lease_s=60, max_attempts=3)) == 2
        conn.execute(sa.text("UPDATE work_unit SET claimed_at = now() - interval '2 hours'"))
    out = run_stage(db, stage="toy", params={}, units=_units(2), factory=make_toy, lease_s=3600)
    assert out["units_done"] == 2
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT array_agg(attempts ORDER BY id) FROM work_unit")).scalar() == [
            2,
            2,
        ]


@pytest.mark.slow
def test_two_worker_processes_share_the_work_without_duplicates(db):
    out = run_stage(
        db,
        stage="toy",
        params={"w": 2},
        units=_units(40),
        factory=partial(make_toy, delay_s=0.05),
        workers=2,
        batch_size=2,
    )
    keys, status = _results(db)
    assert len(keys) == 40 and len(set(keys)) == 40
    assert status == {"done": 40}
    assert out["units_done"] == 40
    with db.engine.connect() as conn:
        claimers = conn.execute(
            sa.text("SELECT count(DISTINCT split_part(claimed_by, ':', 2)) FROM work_unit")
        ).scalar()
    assert claimers == 2  # both processes did some of it


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from functools import partial
    sys.path.insert(0, {tests!r})
    from kb.db import Database, create_engine
    from pipelines.runner import run_stage
    from test_runner import make_toy, _units
    db = Database(url={url!r}, embedded=False, engine=create_engine({url!r}))
    run_stage(db, stage="toy", params={{"k": 9}}, units=_units(30), factory=partial(make_toy, delay_s=0.1),
              workers={workers}, batch_size=2)
""")


def _kill_midway(db, workers: int) -> None:
    script = _KILL_SCRIPT.format(tests=str(ROOT / "tests" / "pipelines"), url=db.url, workers=workers)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            keys, _ = _results(db)
            if len(keys) >= 6:
                break
            if proc.poll() is not None:
                raise AssertionError(f"stage ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            raise AssertionError("no progress before the deadline")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-unit
        proc.wait()


@pytest.mark.slow
def test_kill_minus_9_then_rerun_loses_and_duplicates_nothing(db):
    for workers in (1, 2):
        _kill_midway(db, workers)
        before, status = _results(db)
        assert 6 <= len(before) < 30 and len(before) == len(set(before))
        assert status.get("done", 0) == len(before)  # results and done marks are one transaction
        out = run_stage(db, stage="toy", params={"k": 9}, units=_units(30), factory=make_toy)
        keys, status = _results(db)
        assert sorted(keys) == [f"u{i:03d}" for i in range(30)]
        assert status == {"done": 30}
        assert out["units_done"] == 30 - len(before)  # the rerun did exactly what was left
        with db.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE llm_call, work_unit, failure, pipeline_run CASCADE"))


def test_a_unit_that_keeps_killing_its_worker_is_abandoned_not_retried_forever(db):
    scope = unit_scope("toy", {})
    with db.engine.begin() as conn:
        enqueue(conn, "toy", scope, _units(2), None)
        conn.execute(
            sa.text(
                "UPDATE work_unit SET status = 'claimed', claimed_by = 'elsewhere:1:x', attempts = 3, "
                "claimed_at = now() - interval '2 hours' WHERE unit_key = 'u000'"
            )
        )
    out = run_stage(db, stage="toy", params={}, units=_units(2), factory=make_toy, lease_s=60, max_attempts=3)
    assert out["units_done"] == 1
    with db.engine.connect() as conn:
        status = dict(conn.execute(sa.text("SELECT unit_key, status FROM work_unit")).all())
        fails = conn.execute(sa.text("SELECT unit_key, attempt, reason, run_id FROM failure")).all()
    assert status == {"u000": "failed", "u001": "done"}
    assert [(f.unit_key, f.attempt, f.run_id) for f in fails] == [("u000", 3, out["run_id"])]
    assert "abandoned after 3 attempts" in fails[0].reason


def make_broken(db, run_id):
    from kb.errors import KbError

    raise KbError("model path '/nowhere' is not a local model directory")


@pytest.mark.slow
def test_a_worker_process_that_cannot_start_fails_the_run_with_its_reason(db):
    import pytest

    from kb.errors import KbError

    with pytest.raises(KbError, match="2 of 2 worker processes failed: .*not a local model directory"):
        run_stage(db, stage="toy", params={}, units=_units(3), factory=make_broken, workers=2)
    with db.engine.connect() as conn:
        run = conn.execute(sa.text("SELECT status, error FROM pipeline_run")).one()
    assert run.status == "failed" and "not a local model directory" in run.error
    assert _results(db)[1] == {"pending": 3}  # nothing was claimed
