"""`reasonflux train ... --dry-run`: the exact launch command, resolved configs, DeepSpeed's memory estimate
and validation, without training; and refusing exports whose files do not match their manifest."""

from __future__ import annotations

import hashlib
import json
import shlex

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kb.errors import InputError
from pipelines.train import launch, memory, plan_checks
from tests.support.train_support import config_only_model, dpo_rows, sft_rows, write_export


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Default checkpoint directories go under REASONFLUX_HOME: keep them in the test's tmp dir."""
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))


@pytest.fixture
def big_model(tmp_path):
    return config_only_model(tmp_path / "qwen25-32b")


@pytest.fixture
def sft_export(db, tmp_path):
    return write_export(db, tmp_path / "sft-export", "sft", sft_rows())


def _dry(cli, *args, expect=0):
    return cli("train", "sft", "--dry-run", *args, expect=expect)


def test_dry_run_plans_the_papers_32b_run_on_8_a100s(cli, big_model, sft_export, tmp_path):
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero3",
        "--num-gpus",
        "8",
        "--gpu-memory-gb",
        "80",
        "--output-dir",
        str(tmp_path / "ckpt"),
        "--json",
    ).stdout
    plan = json.loads(out)
    argv = shlex.split(plan["command"])
    assert argv[0].endswith("accelerate") and argv[1] == "launch"
    assert argv[argv.index("--num_processes") + 1] == "8"
    assert argv[argv.index("--mixed_precision") + 1] == "bf16"
    assert argv[argv.index("--deepspeed_config_file") + 1].endswith("deepspeed/zero3_a100x8_32b.json")
    assert argv[argv.index("--module") + 1] == "pipelines.train.worker"
    assert argv[-1] == str(tmp_path / "ckpt" / "launch_spec.json")
    assert plan["training_config"]["learning_rate"] == 2e-5 and plan["training_config"]["max_length"] == 2048
    assert plan["deepspeed_config"]["zero_optimization"]["stage"] == 3
    mem = plan["memory_estimate"]
    assert 32e9 < plan["model_params"]["total"] < 34e9  # Qwen2.5-32B from config.json alone
    assert mem["zero_stage"] == 3 and mem["num_gpus"] == 8 and mem["offload_optimizer"] is True
    # ZeRO-3 with optimizer offload: 2 bytes/param over 8 GPUs + the largest layer gathered (4 bytes/param).
    expected = (4 * plan["model_params"]["largest_layer"] + 2 * plan["model_params"]["total"] / 8) / 2**30
    assert mem["per_gpu_gib"] == pytest.approx(expected, abs=0.01)
    assert not (tmp_path / "ckpt").exists()  # nothing started, nothing written


def test_dry_run_text_shows_command_configs_and_deepspeed_table(cli, big_model, sft_export):
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero3",
        "--num-gpus",
        "8",
    ).output
    assert "accelerate launch" in out.replace("/accelerate launch", " accelerate launch")
    assert "## training config" in out and "learning_rate: 2.0e-05" in out
    assert '"stage": 3' in out and "memory estimate" in out
    if memory.deepspeed_version():
        assert "offload_param" in out and "per GPU" in out  # DeepSpeed's own option table


def test_builtin_estimate_equals_deepspeeds():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for total, largest, gpus in ((32_763_876_352, 778_567_680, 8), (494_032_768, 136_134_656, 1)):
        for opt, par in ((True, True), (True, False), (False, False)):
            ds = estimate_zero3_model_states_mem_needs(total, largest, gpus, 1, opt, par, True)[:2]
            assert memory._zero3_states(total, largest, gpus, 1, opt, par, True) == ds
        for opt in (True, False):
            assert memory._zero2_states(total, gpus, 1, opt) == estimate_zero2_model_states_mem_needs(
                total, gpus, 1, opt
            )


def test_zero3_without_enough_memory_is_rejected(cli, big_model, sft_export):
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero2",
        "--num-gpus",
        "8",
        "--gpu-memory-gb",
        "80",
        expect=2,
    ).output
    assert "field deepspeed" in out and "GiB" in out and "zero3_offload" in out
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero3",
        "--num-gpus",
        "1",
        "--gpu-memory-gb",
        "40",
        expect=2,
    ).output
    assert "field deepspeed" in out and "per GPU" in out


def test_offloaded_states_checked_against_host_memory(cli, big_model, sft_export):
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero3_offload",
        "--num-gpus",
        "8",
        "--cpu-memory-gb",
        "256",
        expect=2,
    ).output
    assert "field cpu-memory-gb" in out


def test_bf16_on_cpu_is_rejected_with_the_fix(cli, tmp_path, sft_export):
    small = config_only_model(
        tmp_path / "small",
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
    out = _dry(cli, "--dataset", sft_export, "--base-model", str(small), "--num-gpus", "0", expect=2).output
    assert "field bf16" in out and "--no-bf16" in out
    out = _dry(
        cli, "--dataset", sft_export, "--base-model", str(small), "--num-gpus", "0", "--no-bf16", "--json"
    ).stdout
    plan = json.loads(out)
    assert "cpu.yaml" in plan["command"] and plan["launcher"] == "inprocess"
    assert plan["deepspeed_config"] is None and plan["memory_estimate"] is None

    # DeepSpeed on CPU goes through accelerate with DS_ACCELERATOR=cpu, and needs deepspeed installed.
    if memory.deepspeed_version():
        plan = json.loads(
            _dry(
                cli,
                "--dataset",
                sft_export,
                "--base-model",
                str(small),
                "--num-gpus",
                "0",
                "--no-bf16",
                "--deepspeed",
                "zero3",
                "--json",
            ).stdout
        )
        assert plan["command"].startswith("DS_ACCELERATOR=cpu ") and plan["launcher"] == "accelerate"
        assert "--deepspeed_config_file" in plan["command"] and plan["memory_estimate"] is None


def test_deepspeed_on_cpu_without_deepspeed_is_refused(cli, monkeypatch, sft_export, tmp_path):
    small = config_only_model(
        tmp_path / "small",
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
    monkeypatch.setattr(plan_checks, "deepspeed_version", lambda: None)
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(small),
        "--num-gpus",
        "0",
        "--no-bf16",
        "--deepspeed",
        "zero2",
        expect=2,
    ).output
    assert "field deepspeed" in out and "deepspeed package" in out


def test_unknown_deepspeed_name_lists_the_shipped_ones(cli, big_model, sft_export):
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        "zero4",
        "--num-gpus",
        "8",
        expect=2,
    ).output
    assert "field deepspeed" in out and "zero3_a100x8_32b" in out and "zero2" in out


def test_batch_sizes_must_match_deepspeeds_train_batch_size(cli, big_model, sft_export, tmp_path):
    custom = json.loads((memory.DEEPSPEED_DIR / "zero3_a100x8_32b.json").read_text())
    custom["train_batch_size"] = 64
    path = tmp_path / "fixed_batch.json"
    path.write_text(json.dumps(custom))
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        str(path),
        "--num-gpus",
        "8",
        "--batch-size",
        "1",
        "--grad-accum",
        "4",
        expect=2,
    ).output
    assert "field train_batch_size" in out and "is 64" in out and "32" in out and str(path) in out
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--deepspeed",
        str(path),
        "--num-gpus",
        "8",
        "--batch-size",
        "2",
        "--grad-accum",
        "4",
    ).output
    assert "agree" in out


def test_real_run_needs_the_gpus_it_asks_for(db, big_model, sft_export):
    if memory.available_gpus() >= 8:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(InputError, match="field num-gpus"):
        launch.plan(db, "sft", dataset=sft_export, base_model=str(big_model), num_gpus=8, dry_run=False)


def test_missing_inputs_and_model_dir_are_named(cli, sft_export, tmp_path):
    assert "field base-model" in _dry(cli, "--dataset", sft_export, expect=2).output
    out = _dry(cli, "--dataset", sft_export, "--base-model", str(tmp_path / "nope"), expect=2).output
    assert "field base-model" in out and "nope" in out


def test_export_with_a_modified_file_is_refused(cli, db, big_model, tmp_path):
    directory = tmp_path / "dpo-export"
    version = write_export(db, directory, "dpo", dpo_rows())
    with (directory / "data" / "train.parquet").open("ab") as fh:
        fh.write(b"tampered")
    for dataset in (version, str(directory)):
        out = cli(
            "train",
            "dpo",
            "--dry-run",
            "--dataset",
            dataset,
            "--base-model",
            str(big_model),
            "--num-gpus",
            "8",
            expect=1,
        ).output
        assert "train.parquet" in out and "does not match the manifest" in out


def test_export_with_an_edited_card_is_accepted_with_a_warning(cli, db, big_model, tmp_path):
    directory = tmp_path / "dpo-export"
    version = write_export(db, directory, "dpo", dpo_rows())
    card = directory / "README.md"
    card.write_text(card.read_text().replace("---\n\n#", "---\n\nOur team's notes on this data.\n\n#", 1))
    out = cli(
        "train", "dpo", "--dry-run", "--dataset", version, "--base-model", str(big_model), "--num-gpus", "8"
    ).output
    assert "verified" in out and version in out


def test_export_rewritten_in_place_disagrees_with_the_kb_and_is_refused(cli, db, big_model, tmp_path):
    """Data and manifest changed together still differ from the KB's record of the version."""
    directory = tmp_path / "sft-export"
    version = write_export(db, directory, "sft", sft_rows())
    pq.write_table(pa.Table.from_pylist(sft_rows(3)), directory / "data" / "train.parquet")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["data/train.parquet"] = hashlib.sha256(
        (directory / "data" / "train.parquet").read_bytes()
    ).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    out = _dry(cli, "--dataset", version, "--base-model", str(big_model), "--num-gpus", "8", expect=1).output
    assert "knowledge base" in out and ("train.parquet" in out or "manifest.json" in out)


def test_unregistered_or_wrong_kind_exports_are_refused(cli, db, big_model, tmp_path):
    loose = tmp_path / "loose"
    write_export(db, loose, "sft", sft_rows(), register=False)
    out = _dry(
        cli, "--dataset", str(loose), "--base-model", str(big_model), "--num-gpus", "8", expect=1
    ).output
    assert "not recorded in this knowledge base" in out
    pairs = write_export(db, tmp_path / "pairs", "dpo", dpo_rows())
    out = _dry(cli, "--dataset", pairs, "--base-model", str(big_model), "--num-gpus", "8", expect=2).output
    assert "field kind" in out and "sft" in out


def test_estimate_without_deepspeed_uses_the_same_formula(monkeypatch):
    params = {"total": 32_763_876_352, "largest_layer": 778_567_680}
    ds_config = json.loads((memory.DEEPSPEED_DIR / "zero3_offload.json").read_text())
    with_ds = memory.estimate_memory(params, ds_config, 8)
    monkeypatch.setattr(memory, "deepspeed_version", lambda: None)
    without = memory.estimate_memory(params, ds_config, 8)
    assert without["source"].startswith("built-in") and without["deepspeed_table"] is None
    assert (without["per_gpu_gib"], without["per_node_cpu_gib"]) == (
        with_ds["per_gpu_gib"],
        with_ds["per_node_cpu_gib"],
    )
    assert without["per_gpu_gib"] == round(4 * params["largest_layer"] / 2**30, 2)  # params offloaded too


def test_cli_config_file_then_flags(cli, big_model, sft_export, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-5\nmax_length: 4096\nsft:\n  num_train_epochs: 2\n")
    plan = json.loads(
        _dry(
            cli,
            "--dataset",
            sft_export,
            "--base-model",
            str(big_model),
            "--num-gpus",
            "8",
            "--config",
            str(path),
            "--cutoff",
            "1024",
            "--set",
            "warmup_steps=0.05",
            "--json",
        ).stdout
    )
    cfg = plan["training_config"]
    assert (cfg["learning_rate"], cfg["num_train_epochs"], cfg["max_length"], cfg["warmup_steps"]) == (
        1e-5,
        2.0,
        1024,
        0.05,
    )
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--num-gpus",
        "8",
        "--cutoff",
        "65536",
        expect=2,
    ).output
    assert "field max_length" in out and "32768" in out
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--num-gpus",
        "8",
        "--set",
        "no_such_field=1",
        expect=2,
    ).output
    assert "field no_such_field" in out
    out = _dry(
        cli,
        "--dataset",
        sft_export,
        "--base-model",
        str(big_model),
        "--num-gpus",
        "8",
        "--set",
        "oops",
        expect=2,
    ).output
    assert "field set" in out
