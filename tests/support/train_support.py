"""Shared by the tests/pipelines/test_train_*.py files: small dataset exports and model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from kb.dataset_write import write_dataset
from kb.datasets import DataPart, ExportSpec

# Qwen2.5-32B-Instruct's architecture (config.json only): enough to plan the paper's run without weights.
QWEN25_32B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 5120,
    "intermediate_size": 27648,
    "num_hidden_layers": 64,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
}


def sft_rows(n: int = 8) -> list[dict]:
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Template 'Telescoping sum {i}' (tags: sequences). Describe it and when "
                    "it applies.",
                },
                {
                    "role": "assistant",
                    "content": f"Rewrite term {i} as a difference so the sum collapses; applies to "
                    "sums of fractions.",
                },
            ]
        }
        for i in range(n)
    ]


def dpo_rows(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [
                {"role": "user", "content": f"Plan a solution for problem {i}: find x with x^2 - 5x + 6 = 0."}
            ],
            "chosen": [{"role": "assistant", "content": "Step 1: apply Vieta. Step 2: check roots 2 and 3."}],
            "rejected": [{"role": "assistant", "content": "Step 1: guess."}],
        }
        for i in range(n)
    ]


def write_export(db, directory: Path, kind: str, rows: list[dict], *, register: bool = True) -> str:
    """A dataset version written by the exporter's own writer (Parquet + card + manifest + KB row)."""
    spec = ExportSpec(
        kind=kind, params={"test": directory.name}, parts=[DataPart("train", pa.Table.from_pylist(rows))]
    )
    manifest = write_dataset(db, spec, directory)
    if not register:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM dataset_version WHERE id = :i"), {"i": manifest["id"]})
    return manifest["id"]


def config_only_model(directory: Path, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or QWEN25_32B_CONFIG))
    return directory


# Small, fast settings for CPU training tests.
CPU_FLAGS = {
    "bf16": False,
    "max_steps": 2,
    "max_length": 64,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "save_steps": 1,
}
