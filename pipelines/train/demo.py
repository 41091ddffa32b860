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

DEMO_OVERRIDES = {"bf16": False, "max_length": 768, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
                  "lr_scheduler_type": "constant", "logging_steps": 10}
SFT_OVERRIDES = {"learning_rate": 3e-3}
DPO_OVERRIDES = {"learning_rate": 2e-4, "beta": 0.1, "sft_weight": 3.0, "precompute_ref_log_probs": True}


def run_training_demo(db: Database, model_dir: str, sft_dataset: str, dpo_dataset: str, *,
                      name: str | None = None, steps: int = 3, sft_steps: int | None = None) -> dict[str, Any]:
    """Stage 1 on the sft export from model_dir (SFT_STEPS, default STEPS), stage 2 on the dpo export from the
    stage-1 navigator (STEPS).

    Returns {"sft": run, "dpo": run, "navigator": name, "navigator_path": path}; the DPO navigator is
    registered under `name` (default navigator-dpo-run<ID>) for `reasonflux solve --navigator NAME`.
    """
    def overrides(n: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {**DEMO_OVERRIDES, **extra, "max_steps": n, "save_steps": n}

    sft = execute(db, plan(db, "sft", dataset=sft_dataset, base_model=model_dir, num_gpus=0,
                           overrides=overrides(sft_steps or steps, SFT_OVERRIDES)))
    dpo = execute(db, plan(db, "dpo", dataset=dpo_dataset, base_model=sft["navigator"], num_gpus=0, name=name,
                           overrides=overrides(steps, DPO_OVERRIDES)))
    return {"sft": sft, "dpo": dpo, "navigator": dpo["navigator"], "navigator_path": dpo["output_path"]}
