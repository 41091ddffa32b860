"""Training configs: the paper's defaults, documented fields, YAML + flag precedence, errors naming fields."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kb.errors import InputError
from pipelines.train import DPOTrainConfig, SFTTrainConfig


def test_sft_defaults_are_the_papers():
    c = SFTTrainConfig()
    assert (c.finetuning_type, c.learning_rate, c.num_train_epochs, c.max_length, c.bf16) == (
        "full",
        2e-5,
        3.0,
        2048,
        True,
    )
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps, c.lr_scheduler_type) == (
        1,
        8,
        "cosine",
    )
    assert DPOTrainConfig().bf16 is True and DPOTrainConfig().beta == 0.1


def test_trl_config_receives_every_training_field(tmp_path):
    c = SFTTrainConfig.load(None, {"bf16": False, "max_length": 128})
    args = c.trl_config(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (args.learning_rate, args.num_train_epochs, args.max_length, args.bf16) == (2e-5, 3.0, 128, False)
    assert args.completion_only_loss is True
    d = DPOTrainConfig.load(None, {"bf16": False, "beta": 0.3, "learning_rate": 1e-6})
    dargs = d.trl_config(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (dargs.beta, dargs.learning_rate, dargs.loss_type) == (0.3, 1e-6, ["sigmoid"])


def test_every_field_is_documented():
    for cls in (SFTTrainConfig, DPOTrainConfig):
        undocumented = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
        assert undocumented == []


def test_yaml_then_flags_precedence(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "learning_rate: 1e-5\nnum_train_epochs: 2\nmax_length: 512\n"
        "dpo:\n  beta: 0.5\n  learning_rate: 3e-7\nsft:\n  packing: true\n"
    )
    sft = SFTTrainConfig.load(path, {"num_train_epochs": "5", "max_steps": None})
    assert (sft.learning_rate, sft.num_train_epochs, sft.max_length, sft.packing) == (1e-5, 5.0, 512, True)
    assert sft.max_steps == -1  # a flag left unset does not override
    dpo = DPOTrainConfig.load(path, {"beta": 0.2})
    assert (dpo.learning_rate, dpo.beta, dpo.max_length) == (3e-7, 0.2, 512)


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("learning_rate: fast\n", "learning_rate"),
        ("lerning_rate: 1e-5\n", "lerning_rate"),
        ("bf16: maybe\n", "bf16"),
        ("finetuning_type: qlora\n", "finetuning_type"),
        ("finetuning_type: lora\nlora_r: 0\n", "lora_r"),
        ("per_device_train_batch_size: 0\n", "per_device_train_batch_size"),
        ("max_steps: 0\n", "max_steps"),
    ],
)
def test_bad_yaml_names_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(InputError) as err:
        SFTTrainConfig.load(path)
    assert err.value.field == field
    assert field in str(err.value)


def test_bad_flag_names_the_field():
    with pytest.raises(InputError, match="field beta"):
        DPOTrainConfig.load(None, {"beta": "-1"})
    with pytest.raises(InputError, match="field beta"):
        SFTTrainConfig.load(None, {"beta": "0.1"})  # a DPO-only field is unknown to SFT


def test_fields_command_lists_defaults_and_help(cli):
    out = json.loads(cli("train", "fields", "dpo", "--json").output)
    by_name = {r["field"]: r for r in out}
    assert by_name["beta"]["default"] == 0.1 and "reference" in by_name["beta"]["help"]
    assert by_name["learning_rate"]["default"] == 5e-7
