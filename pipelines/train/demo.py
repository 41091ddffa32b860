"""The training part of `reasonflux demo`: SFT then DPO of the tiny model on CPU, a few steps each.

A random tiny model learns nothing useful in a few steps; this exercises the real path (verified exports,
TRL trainers, run rows, per-step metrics, navigator registration) end to end. The same calls with a real
base model, the paper's defaults and GPUs are `reasonflux train sft|dpo` without the overrides below.
"""

from __future__ import annotations

from typing import Any

from kb.db import Database
from pipelines.train.launch import plan
from pipelines.train.run import execute

DEMO_OVERRIDES = {"bf16": False, "max_steps": 3, "max_length": 1024, "per_device_train_batch_size": 2,
                  "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "save_steps": 3,
                  "lr_scheduler_type": "constant"}


def run_training_demo(db: Database, model_dir: str, sft_dataset: str, dpo_dataset: str, *,
                      name: str | None = None, steps: int = 3) -> dict[str, Any]:
    """Stage 1 on the sft export from model_dir, stage 2 on the dpo export from the stage-1 navigator.

    Returns {"sft": run, "dpo": run, "navigator": name, "navigator_path": path}; the DPO navigator is
    registered under `name` (default navigator-dpo-run<ID>) for `reasonflux solve --navigator NAME`.
    """
    overrides = {**DEMO_OVERRIDES, "max_steps": steps, "save_steps": steps}
    sft = execute(db, plan(db, "sft", dataset=sft_dataset, base_model=model_dir, num_gpus=0,
                           overrides={**overrides, "learning_rate": 1e-4}))
    dpo = execute(db, plan(db, "dpo", dataset=dpo_dataset, base_model=sft["navigator"], num_gpus=0, name=name,
                           overrides={**overrides, "learning_rate": 5e-5, "beta": 0.1}))
    return {"sft": sft, "dpo": dpo, "navigator": dpo["navigator"], "navigator_path": dpo["output_path"]}
