"""The hyper-parameters of a retriever fine-tuning run (pipelines/retriever/fit.py), apart from the training
code so command-line options can show their defaults without importing numpy or torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kb.errors import InputError


@dataclass(frozen=True)
class HyperParams:
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    scale: float = 20.0
    max_steps: int | None = None
    seed: int = 0
    # Training reads at most this many word pieces per text (the saved model keeps its own window):
    # on a CPU the cost of a step is about linear in it, and a query's or view's head carries most signal.
    max_seq_length: int | None = 128
    device: str | None = None  # None: cuda when present, else cpu

    def check(self) -> HyperParams:
        if self.epochs < 1:
            raise InputError("must be at least 1", field="--epochs")
        if self.batch_size < 2:
            raise InputError(
                "must be at least 2 (the other queries' templates are the negatives)", field="--batch-size"
            )
        if not 0 < self.learning_rate < 1:
            raise InputError("must be between 0 and 1", field="--learning-rate")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise InputError("must be at least 8", field="--max-seq-length")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("must be at least 1", field="--max-steps")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
