"""Stage 1: supervised fine-tuning of the navigator on structured template knowledge."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from pipelines.train.base_config import TrainConfig, _help


@dataclass
class SFTTrainConfig(TrainConfig):
    """The paper's stage-1 defaults (ReasonFlux's LLaMA-Factory command): full fine-tune, lr 2e-5, 3 epochs,
    cutoff 2048, bf16, cosine schedule; one micro-batch of 1 per GPU with 8 accumulation steps."""

    completion_only_loss: bool = field(
        default=True,
        metadata=_help(
            "Train only on the assistant answer (LLaMA-Factory's default), not on the question; "
            "false trains on the whole conversation."
        ),
    )
    packing: bool = field(
        default=False,
        metadata=_help("Pack several examples into one max_length sequence (the paper does not pack)."),
    )

    stage: typing.ClassVar[str] = "sft"

    def trl_config(self, **runtime: Any):
        """TRL's SFTConfig for this config plus runtime settings (output_dir, use_cpu, deepspeed...)."""
        from trl import SFTConfig

        return SFTConfig(**self.trainer_kwargs(), **runtime)
