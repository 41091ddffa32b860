"""The real-model stage of `reasonflux demo`: SFT of a small pre-trained model on the CPU.

The tiny model's SFT and DPO are the toy world's and the loop's (`demo.toy_world`, `pipelines.loop`). This
is the real path (verified export, TRL trainer, run rows, per-step metrics, navigator registration) with a
pre-trained base; the same call with the paper's defaults and GPUs is `reasonflux train sft` without the
overrides below.
"""

from __future__ import annotations

from typing import Any

from kb.db import Database
from pipelines.train.launch import plan
from pipelines.train.run import execute

DEMO_OVERRIDES = {
    "bf16": False,
    "max_length": 768,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "lr_scheduler_type": "constant",
    "logging_steps": 10,
}
# A pre-trained instruct model (SmolLM2-135M) needs a gentle rate and few steps to take up the plan format
# (benchmarks/loop_learning.py measures it); batch 4 keeps a CPU step near 10 s.
REAL_SFT_OVERRIDES = {"learning_rate": 1e-4, "per_device_train_batch_size": 4, "max_length": 512}


def run_real_sft(
    db: Database, base_model: str, sft_dataset: str, *, steps: int, name: str | None = None
) -> dict[str, Any]:
    """Stage 1 of a real base model (a registered name or folder) on the sft export: STEPS full fine-tune steps
    on the CPU. Returns the training run (its `navigator` is registered, `output_path` its folder)."""
    overrides = {
        **DEMO_OVERRIDES,
        **REAL_SFT_OVERRIDES,
        "max_steps": steps,
        "save_steps": steps,
        "logging_steps": steps,
    }  # one loss line, the last step's
    return execute(
        db,
        plan(
            db, "sft", dataset=sft_dataset, base_model=base_model, num_gpus=0, name=name, overrides=overrides
        ),
    )
