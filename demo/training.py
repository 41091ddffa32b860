"""The training part of `reasonflux demo`: SFT then DPO of the tiny model on CPU.

This exercises the real path (verified exports, TRL trainers, run rows, per-step metrics, navigator
registration) end to end. SFT runs long enough (a tiny model, a high learning rate) for the navigator to
learn the navigator contract's reply format from the export's plan rows, so the solver parses its plans;
DPO keeps that format with an SFT term on the chosen replies (`sft_weight`). What it plans is not
meaningful. The same calls with a real base model, the paper's defaults and GPUs are `reasonflux train
sft|dpo` without the overrides below.
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
SFT_OVERRIDES = {"learning_rate": 3e-3}
DPO_OVERRIDES = {"learning_rate": 2e-4, "beta": 0.1, "sft_weight": 3.0, "precompute_ref_log_probs": True}
# A pre-trained instruct model (SmolLM2-135M) needs a gentle rate and few steps to take up the plan format
# (benchmarks/loop_learning.py measures it); batch 4 keeps a CPU step near 10 s.
REAL_SFT_OVERRIDES = {"learning_rate": 1e-4, "per_device_train_batch_size": 4, "max_length": 512}


def run_training_demo(
    db: Database,
    model_dir: str,
    sft_dataset: str,
    dpo_dataset: str,
    *,
    name: str | None = None,
    steps: int = 3,
    sft_steps: int | None = None,
) -> dict[str, Any]:
    """Stage 1 on the sft export from model_dir (SFT_STEPS, default STEPS), stage 2 on the dpo export from the
    stage-1 navigator (STEPS).

    Returns {"sft": run, "dpo": run, "navigator": name, "navigator_path": path}; the DPO navigator is
    registered under `name` (default navigator-dpo-run<ID>) for `reasonflux solve --navigator NAME`.
    """

    def overrides(n: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {**DEMO_OVERRIDES, **extra, "max_steps": n, "save_steps": n}

    sft = execute(
        db,
        plan(
            db,
            "sft",
            dataset=sft_dataset,
            base_model=model_dir,
            num_gpus=0,
            overrides=overrides(sft_steps or steps, SFT_OVERRIDES),
        ),
    )
    dpo = execute(
        db,
        plan(
            db,
            "dpo",
            dataset=dpo_dataset,
            base_model=sft["navigator"],
            num_gpus=0,
            name=name,
            overrides=overrides(steps, DPO_OVERRIDES),
        ),
    )
    return {"sft": sft, "dpo": dpo, "navigator": dpo["navigator"], "navigator_path": dpo["output_path"]}


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
