"""Stage 1 on TRL's SFTTrainer: template-knowledge conversations in, a fine-tuned navigator out."""

from __future__ import annotations

from typing import Any

from pipelines.train.fit import fit
from pipelines.train.sft_config import SFTTrainConfig


def train_sft(
    config: SFTTrainConfig, *, base_model: str, train_dataset, output_dir: str, **runtime: Any
) -> dict[str, Any]:
    """Train, save the final model + tokenizer in output_dir, and return the trainer's summary metrics.

    runtime: callbacks, resume_from_checkpoint, deepspeed, use_cpu (see pipelines.train.fit.fit).
    """
    from trl import SFTTrainer

    return fit(
        SFTTrainer,
        config,
        base_model=base_model,
        train_dataset=train_dataset,
        output_dir=output_dir,
        **runtime,
    )
