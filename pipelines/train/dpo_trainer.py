"""Stage 2 on TRL's DPOTrainer: trajectory preference pairs in, a preference-tuned navigator out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.train.dpo_config import DPOTrainConfig
from pipelines.train.sft_trainer import check_not_emptied, check_trainable_model, runtime_args, summarize


def train_dpo(config: DPOTrainConfig, *, base_model: str, train_dataset, output_dir: str,
              callbacks: Sequence[Any] = (), resume_from_checkpoint: str | None = None,
              deepspeed: str | None = None, use_cpu: bool = False) -> dict[str, Any]:
    """Train against a frozen copy of base_model (the reference), save in output_dir, return the summary.

    The metrics logged per step include rewards/chosen, rewards/rejected, rewards/margins and
    rewards/accuracies (the share of pairs whose chosen answer gets the higher implicit reward).
    """
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    check_trainable_model(base_model)
    args = config.trl_config(**runtime_args(output_dir, deepspeed=deepspeed, use_cpu=use_cpu))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    trainer = DPOTrainer(model=base_model, args=args, train_dataset=train_dataset,
                         processing_class=tokenizer, callbacks=list(callbacks))
    check_not_emptied(trainer, len(train_dataset), config.max_length)
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
    return summarize(trainer, result)
