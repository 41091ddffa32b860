"""Stage 2 on TRL's DPOTrainer: trajectory preference pairs in, a preference-tuned navigator out."""

from __future__ import annotations

from typing import Any

from pipelines.train.dpo_config import DPOTrainConfig
from pipelines.train.fit import fit


def train_dpo(
    config: DPOTrainConfig, *, base_model: str, train_dataset, output_dir: str, **runtime: Any
) -> dict[str, Any]:
    """Train against a frozen copy of base_model (the reference), save in output_dir, return the summary.

    The metrics logged per step include rewards/chosen, rewards/rejected, rewards/margins and
    rewards/accuracies (the share of pairs whose chosen answer gets the higher implicit reward).
    """
    from trl import DPOTrainer

    return fit(
        DPOTrainer,
        config,
        base_model=base_model,
        train_dataset=train_dataset,
        output_dir=output_dir,
        **runtime,
    )
