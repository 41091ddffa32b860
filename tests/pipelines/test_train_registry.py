"""training_run rows for finished, failed, interrupted and resumed runs; navigators by name."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import sqlalchemy as sa
from transformers import TrainerCallback

from demo.tiny_model import build_tiny_model
from kb.errors import ConflictError, InputError, KbError, NotFound
from kb.models import TrainingRun
from pipelines.train import execute, plan, resolve_navigator
from tests.support.train_support import CPU_FLAGS, config_only_model, sft_rows, write_export


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Default checkpoint directories go under REASONFLUX_HOME: keep them in the test's tmp dir."""
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def sft_data(db, tmp_path):
    return write_export(db, tmp_path / "sft", "sft", sft_rows())


class FailAt(TrainerCallback):
    """Raises once the checkpoint of `step` is on disk (on_save runs after it is written)."""

    def __init__(self, step: int, exc: BaseException):
        self.step, self.exc = step, exc

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.exc


class SigtermAt(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def _plan(db, data, model, **flags):
    return plan(db, "sft", dataset=data, base_model=str(model), num_gpus=0, overrides={**CPU_FLAGS, **flags})


def _row(db, run_id) -> TrainingRun:
    with db.session() as s:
        return s.get(TrainingRun, run_id)


def _steps(db, run_id) -> list[int]:
    with db.engine.connect() as conn:
        return (
            conn.execute(
                sa.text("SELECT step FROM training_metric WHERE run_id = :r ORDER BY step"), {"r": run_id}
            )
            .scalars()
            .all()
        )


def test_finished_run_row_and_navigator(db, tiny, sft_data, tmp_path):
    run = execute(db, _plan(db, sft_data, tiny, output_dir=str(tmp_path / "out")))
    row = _row(db, run["id"])
    assert (row.stage, row.status, row.dataset_version_id, row.error) == ("sft", "succeeded", sft_data, None)
    assert row.base_model == str(tiny) and row.output_path == str(tmp_path / "out")
    assert row.started_at <= row.finished_at and row.code_version
    assert row.config["training"]["max_steps"] == 2 and row.config["launch"]["launcher"] == "inprocess"
    assert math.isfinite(row.metrics["loss"]) and math.isfinite(row.metrics["train_loss"])
    assert _steps(db, run["id"]) == [1, 2]
    with db.session() as s:
        assert resolve_navigator(s, run["navigator"]) == str(tmp_path / "out")
        assert resolve_navigator(s, str(tiny)) == str(tiny)  # a plain directory passes through
        with pytest.raises(NotFound, match=run["navigator"]):
            resolve_navigator(s, "no-such-navigator")
    with pytest.raises(InputError, match="succeeded"):
        plan(db, "sft", resume=run["id"], num_gpus=0)


def test_failed_run_bad_model_dir_is_recorded(db, sft_data, tmp_path):
    no_weights = config_only_model(
        tmp_path / "no-weights",
        {
            "model_type": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 128,
        },
    )
    p = _plan(db, sft_data, no_weights)
    with pytest.raises(KbError, match="no model weights"):
        execute(db, p)
    with db.session() as s:
        row = s.exec(sa.select(TrainingRun)).scalars().one()
    assert row.status == "failed" and str(no_weights) in row.error and row.finished_at is not None
    with pytest.raises(InputError, match="no checkpoint"):
        plan(db, "sft", resume=row.id, num_gpus=0)


def test_failed_run_resumes_from_its_last_checkpoint(db, cli, tiny, sft_data, tmp_path):
    p = _plan(db, sft_data, tiny, max_steps=3, output_dir=str(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="injected"):
        execute(db, p, extra_callbacks=[FailAt(2, RuntimeError("injected failure"))])
    with db.session() as s:
        failed = s.exec(sa.select(TrainingRun)).scalars().one()
    assert failed.status == "failed" and "injected failure" in failed.error
    assert _steps(db, failed.id) == [1, 2] and (tmp_path / "out" / "checkpoint-2").is_dir()

    out = json.loads(cli("train", "sft", "--resume", str(failed.id), "--num-gpus", "0", "--json").stdout)
    resumed = _row(db, out["id"])
    assert (resumed.status, resumed.resumed_from, resumed.output_path) == (
        "succeeded",
        failed.id,
        failed.output_path,
    )
    assert resumed.dataset_version_id == sft_data and resumed.config["training"]["max_steps"] == 3
    assert _steps(db, resumed.id) == [3]  # continued from checkpoint-2, not from scratch
    assert math.isfinite(resumed.metrics["loss"]) and resumed.metrics["global_step"] == 3

    listed = json.loads(cli("train", "runs", "--json").stdout)
    assert [(r["id"], r["status"], r["resumed_from"]) for r in listed] == [
        (resumed.id, "succeeded", failed.id),
        (failed.id, "failed", None),
    ]
    shown = json.loads(cli("train", "show", str(failed.id), "--steps", "--json").stdout)
    assert [s["step"] for s in shown["steps"]] == [1, 2] and shown["navigator"] is None


def test_resume_keeps_dataset_and_model(db, tiny, sft_data, tmp_path):
    p = _plan(db, sft_data, tiny, max_steps=3)
    with pytest.raises(RuntimeError):
        execute(db, p, extra_callbacks=[FailAt(1, RuntimeError("boom"))])
    with db.session() as s:
        failed = s.exec(sa.select(TrainingRun)).scalars().one()
    with pytest.raises(InputError, match="field base-model"):
        plan(db, "sft", resume=failed.id, base_model=str(tmp_path), num_gpus=0)
    with pytest.raises(InputError, match="dpo run|sft run"):
        plan(db, "dpo", resume=failed.id, num_gpus=0)


def test_sigterm_is_recorded_as_interrupted_and_resumable(db, tiny, sft_data):
    p = _plan(db, sft_data, tiny)
    with pytest.raises(KeyboardInterrupt):
        execute(db, p, extra_callbacks=[SigtermAt()])
    with db.session() as s:
        row = s.exec(sa.select(TrainingRun)).scalars().one()
    assert row.status == "interrupted" and "SIGTERM" in row.error
    resumed = execute(db, plan(db, "sft", resume=row.id, num_gpus=0))
    assert resumed["status"] == "succeeded" and resumed["resumed_from"] == row.id


def test_navigator_name_conflict_is_caught_before_training(db, tiny, sft_data):
    execute(
        db,
        plan(db, "sft", dataset=sft_data, base_model=str(tiny), num_gpus=0, name="nav", overrides=CPU_FLAGS),
    )
    with pytest.raises(ConflictError, match="nav"):
        plan(db, "sft", dataset=sft_data, base_model=str(tiny), num_gpus=0, name="nav", overrides=CPU_FLAGS)
    with db.session() as s:
        assert len(s.exec(sa.select(TrainingRun)).scalars().all()) == 1


def test_cutoff_that_drops_every_example_fails_the_run_clearly(db, tiny, sft_data):
    with pytest.raises(KbError, match="raise --cutoff"):
        execute(db, _plan(db, sft_data, tiny, max_length=8))
    with db.session() as s:
        row = s.exec(sa.select(TrainingRun)).scalars().one()
    assert row.status == "failed" and "max_length 8" in row.error
