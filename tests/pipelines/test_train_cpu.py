"""Both stages on CPU with the tiny model for a few steps: finite loss, DPO reward accuracy recorded,
navigators registered and loadable by name."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.tiny_model import build_tiny_model
from pipelines.train import resolve_navigator
from tests.support.train_support import CPU_FLAGS, dpo_rows, sft_rows, write_export

CPU_ARGS = (
    "--num-gpus",
    "0",
    "--no-bf16",
    "--max-steps",
    "2",
    "--cutoff",
    "64",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--set",
    "gradient_checkpointing=false",
    "--set",
    "save_steps=1",
    "--progress-timeout",
    "300",
)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Default checkpoint directories go under REASONFLUX_HOME: keep them in the test's tmp dir."""
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _train(cli, stage, *args):
    return json.loads(cli("train", stage, *CPU_ARGS, *args, "--json").stdout)


@pytest.mark.slow
def test_sft_then_dpo_on_cpu(cli, db, tiny, tmp_path):
    sft_data = write_export(db, tmp_path / "sft", "sft", sft_rows())
    dpo_data = write_export(db, tmp_path / "dpo", "dpo", dpo_rows())

    sft = _train(
        cli, "sft", "--dataset", sft_data, "--base-model", str(tiny), "--name", "nav-sft", "--lr", "1e-4"
    )
    assert sft["status"] == "succeeded" and sft["navigator"] == "nav-sft"
    assert math.isfinite(sft["metrics"]["loss"]) and sft["metrics"]["global_step"] == 2
    assert sft["metrics"]["train_tokens_per_second"] > 0 and sft["metrics"]["peak_rss_gib"] > 0

    # Stage 2 starts from the stage-1 navigator, by name.
    dpo = _train(
        cli,
        "dpo",
        "--dataset",
        dpo_data,
        "--base-model",
        "nav-sft",
        "--beta",
        "0.2",
        "--lr",
        "5e-5",
        "--max-steps",
        "3",
    )
    assert dpo["status"] == "succeeded" and dpo["navigator"] == f"navigator-dpo-run{dpo['id']}"
    metrics = dpo["metrics"]
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert "rewards/margins" in metrics and metrics["global_step"] == 3

    with db.engine.connect() as conn:
        steps = conn.execute(
            sa.text("SELECT step, metrics FROM training_metric WHERE run_id = :r ORDER BY step"),
            {"r": dpo["id"]},
        ).all()
        run = (
            conn.execute(sa.text("SELECT * FROM training_run WHERE id = :r"), {"r": dpo["id"]})
            .mappings()
            .one()
        )
    assert [s for s, _ in steps] == [1, 2, 3]
    assert all(
        "rewards/accuracies" in m and "rewards/margins" in m and math.isfinite(m["loss"]) for _, m in steps
    )
    assert run["config"]["training"]["beta"] == 0.2 and run["config"]["training"]["learning_rate"] == 5e-5
    with db.session() as s:
        assert run["base_model"] == resolve_navigator(s, "nav-sft")
    assert run["dataset_version_id"] == dpo_data and run["code_version"] and run["finished_at"]

    names = [n["name"] for n in json.loads(cli("navigators", "list", "--json").stdout)]
    assert names == ["nav-sft", dpo["navigator"]]

    # The navigator is a loadable chat model for the solver's backends.
    from pipelines.llm.base import ChatRequest, SamplingParams
    from pipelines.llm.transformers_backend import TransformersBackend

    with db.session() as s:
        path = resolve_navigator(s, dpo["navigator"])
    backend = TransformersBackend(path)
    out = backend.generate(
        [ChatRequest([{"role": "user", "content": "Solve x^2 = 4."}], SamplingParams(max_tokens=5))]
    )
    assert out[0].error is None and out[0].completion_tokens > 0


@pytest.mark.slow
def test_accelerate_launch_on_cpu_runs_the_same_worker(cli, db, tiny, tmp_path):
    """The GPU path (accelerate launch -> worker process -> metrics in the KB) exercised with 1 CPU process."""
    data = write_export(db, tmp_path / "sft", "sft", sft_rows(4))
    run = _train(
        cli,
        "sft",
        "--dataset",
        data,
        "--base-model",
        str(tiny),
        "--launcher",
        "accelerate",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert run["status"] == "succeeded" and math.isfinite(run["metrics"]["loss"])
    assert (tmp_path / "out" / "launch_spec.json").is_file() and (tmp_path / "out" / "config.json").is_file()
    assert run["metrics"]["global_step"] == 1 and (tmp_path / "out" / "train.log").is_file()
    assert run["metrics"]["train_tokens_per_second"] > 0  # written by the worker process


def test_sft_then_dpo_from_its_output_registers_a_dpo_navigator(db, tiny, tmp_path):
    from pipelines.train.launch import plan
    from pipelines.train.run import execute

    sft_data = write_export(db, tmp_path / "sft", "sft", sft_rows(4))
    dpo_data = write_export(db, tmp_path / "dpo", "dpo", dpo_rows(4))
    cpu = CPU_FLAGS
    sft = execute(db, plan(db, "sft", dataset=sft_data, base_model=str(tiny), num_gpus=0, overrides=cpu))
    dpo = execute(
        db,
        plan(
            db,
            "dpo",
            dataset=dpo_data,
            base_model=sft["navigator"],
            num_gpus=0,
            name="demo-navigator",
            overrides={**cpu, "precompute_ref_log_probs": True},
        ),
    )
    assert sft["status"] == dpo["status"] == "succeeded"
    assert dpo["base_model"] == sft["output_path"]
    assert "rewards/accuracies" in dpo["metrics"]
    with db.session() as s:
        assert resolve_navigator(s, "demo-navigator") == dpo["output_path"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_deepspeed_zero3_on_cpu(cli, db, tiny, tmp_path, tmp_path_factory, monkeypatch):
    """The shipped ZeRO-3 config through accelerate + DeepSpeed (DS_ACCELERATOR=cpu): the GPU code path."""
    pytest.importorskip("deepspeed")
    # DeepSpeed JIT-builds deepspeed_shm_comm (and cpu_adam); a build killed earlier left its lock (no live
    # builder), which used to make every later run wait forever. The run clears it and builds afresh. The
    # directory outlives the session (beside pytest's temporary roots) so cpu_adam, minutes to build on a
    # small machine, is built once.
    extensions = tmp_path_factory.getbasetemp().parent / "reasonflux-torch-extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # a live build's lock is left alone, as the launcher does
        (extensions / "deepspeed_shm_comm" / "lock").touch(exist_ok=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    data = write_export(db, tmp_path / "sft", "sft", sft_rows(4))
    # A first build of cpu_adam prints nothing for minutes on two busy cores.
    run = _train(
        cli,
        "sft",
        "--dataset",
        data,
        "--base-model",
        str(tiny),
        "--deepspeed",
        "zero3",
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
        "--progress-timeout",
        "1200",
    )
    assert run["status"] == "succeeded" and math.isfinite(run["metrics"]["loss"])
    assert (tmp_path / "out" / "checkpoint-1" / "global_step1").is_dir()  # DeepSpeed's ZeRO checkpoint
    assert (tmp_path / "out" / "model.safetensors").is_file()  # 16-bit weights gathered on save


def test_lora_sft_and_dpo_save_merged_plain_models(cli, db, tiny, tmp_path):
    """finetuning_type lora trains adapters and saves them merged: a plain model folder that differs from the
    base and loads without peft, so it serves and trains again like a full fine-tune's."""
    import torch
    from safetensors.torch import load_file

    sft_data = write_export(db, tmp_path / "sft", "sft", sft_rows())
    dpo_data = write_export(db, tmp_path / "dpo", "dpo", dpo_rows())
    lora = ("--set", "finetuning_type=lora", "--set", "lora_r=4", "--set", "lora_alpha=8")
    sft = _train(
        cli,
        "sft",
        "--dataset",
        sft_data,
        "--base-model",
        str(tiny),
        "--name",
        "nav-lora",
        "--lr",
        "1e-2",
        *lora,
    )
    assert sft["status"] == "succeeded"
    with db.session() as s:
        out = resolve_navigator(s, "nav-lora")
    files = {p.name for p in Path(out).iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    base, merged = load_file(str(tiny / "model.safetensors")), load_file(f"{out}/model.safetensors")
    assert set(base) == set(merged)  # the same parameter names as the base: no lora_A/lora_B left
    assert any(not torch.equal(base[k], merged[k]) for k in base)

    dpo = _train(cli, "dpo", "--dataset", dpo_data, "--base-model", "nav-lora", "--lr", "1e-3", *lora)
    assert dpo["status"] == "succeeded" and math.isfinite(dpo["metrics"]["loss"])


def test_lora_refuses_deepspeed(cli, db, tiny, tmp_path):
    data = write_export(db, tmp_path / "sft", "sft", sft_rows())
    r = cli(
        "train",
        "sft",
        *CPU_ARGS,
        "--dataset",
        data,
        "--base-model",
        str(tiny),
        "--set",
        "finetuning_type=lora",
        "--deepspeed",
        "zero3",
        "--dry-run",
        expect=None,
    )
    assert r.exit_code == 2 and "finetuning_type" in r.output and "DeepSpeed" in r.output
