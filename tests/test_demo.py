"""`reasonflux demo` runs the whole loop on the test database, twice (the second run reuses what it can)."""

from __future__ import annotations

import sqlalchemy as sa


def _count(db, sql: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def test_demo_runs_the_whole_loop_and_reruns(cli, db, tmp_path, monkeypatch):
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))
    out = cli("demo").output
    for stage in ("Import the starter template library", "Hybrid retrieval", "Edit a template", "Solve a problem",
                  "Mine, sample, evaluate", "DPO pairs", "Versioned dataset exports", "Train the navigator",
                  "Solve with the trained navigator", "meaningless"):
        assert stage in out, f"demo output lacks {stage!r}"
    assert "Final answer: 5050 (correct)" in out
    assert _count(db, "SELECT count(*) FROM current_template WHERE status = 'active'") >= 30
    assert _count(db, "SELECT count(*) FROM dpo_pair") > 0
    assert _count(db, "SELECT count(*) FROM dataset_version") == 2
    assert _count(db, "SELECT count(*) FROM training_run WHERE status = 'succeeded'") == 2
    assert _count(db, "SELECT count(*) FROM navigator_model") == 2  # the SFT and the DPO checkpoints
    assert _count(db, "SELECT count(*) FROM solve_session") == 2
    assert _count(db, "SELECT count(*) FROM solve_session WHERE reason IS NOT NULL AND status = 'failed'") == 1
    # The trained tiny navigator plans in the contract: the solver parsed its plan and ran a step with it.
    assert _count(db, "SELECT count(*) FROM solve_round r JOIN solve_session s ON s.id = r.session_id "
                      "WHERE s.status = 'failed' AND r.kind = 'step'") >= 1
    assert "The trained navigator's plan parsed" in out
    versions = _count(db, "SELECT count(*) FROM template_version")

    again = cli("demo", "--no-train").output
    assert "this edit was a no-op" in again
    assert _count(db, "SELECT count(*) FROM template_version") == versions
    assert _count(db, "SELECT count(*) FROM dataset_version") == 2
