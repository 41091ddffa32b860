"""Stage 2: DPO of the navigator on trajectory pairs ranked by stored rewards."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from pipelines.train.base_config import TrainConfig, _help


@dataclass
class DPOTrainConfig(TrainConfig):
    """Stage-2 defaults. The paper gives no DPO hyper-parameters; these are the usual full-fine-tune DPO
    values (TRL / Zephyr): lr 5e-7, beta 0.1, sigmoid loss, one epoch, on the same hardware (bf16)."""

    learning_rate: float = field(default=5e-7, metadata=_help("Peak learning rate of AdamW (flag: --lr)."))
    num_train_epochs: float = field(default=1.0, metadata=_help("Passes over the pairs."))
    beta: float = field(
        default=0.1,
        metadata=_help(
            "DPO temperature: higher keeps the policy closer to the reference model (flag: --beta)."
        ),
    )
    loss_type: str = field(
        default="sigmoid",
        metadata=_help(
            "DPO loss: 'sigmoid' (the original DPO), 'hinge', 'ipo', 'robust' (see TRL's DPOConfig)."
        ),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=_help(
            "Probability that a preference label is flipped (robust / conservative DPO); 0 disables."
        ),
    )
    sft_weight: float = field(
        default=0.0,
        metadata=_help(
            "Weight of a negative log-likelihood term on the chosen reply added to the DPO loss (RPO, as in "
            "iterative reasoning preference optimisation); it keeps the chosen replies likely, so the reply format "
            "survives many DPO rounds. 0 is plain DPO."
        ),
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata=_help(
            "Compute the reference model's log-probabilities once before training, so the reference model "
            "need not stay in memory."
        ),
    )

    stage: typing.ClassVar[str] = "dpo"

    def validate(self) -> None:
        super().validate()
        if not self.beta > 0:
            self._bad("beta", "must be > 0")
        if self.loss_type not in {
            "sigmoid",
            "hinge",
            "ipo",
            "robust",
            "exo_pair",
            "nca_pair",
            "bco_pair",
            "sppo_hard",
            "aot",
            "aot_unpaired",
            "apo_zero",
            "apo_down",
            "sigmoid_norm",
        }:
            self._bad("loss_type", f"unknown DPO loss {self.loss_type!r}")
        if not 0 <= self.label_smoothing < 0.5:
            self._bad("label_smoothing", "must be in [0, 0.5)")
        if self.sft_weight < 0:
            self._bad("sft_weight", "must be >= 0")

    def trl_config(self, **runtime: Any):
        from trl import DPOConfig

        kwargs = self.trainer_kwargs()
        sft_weight = kwargs.pop("sft_weight")
        if sft_weight > 0:
            kwargs.update(loss_type=[self.loss_type, "sft"], loss_weights=[1.0, sft_weight])
        return DPOConfig(**kwargs, **runtime)
