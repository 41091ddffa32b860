"""The solver's limits and sampling defaults: apart from serve.solver so that the commands' help (which shows
these defaults) loads without the solver's dependencies."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from kb.errors import InputError
from pipelines import navigator
from pipelines.llm.base import SamplingParams


@dataclass(frozen=True)
class SolverConfig:
    max_rounds: int = 12  # step rounds (retrieve + instantiate + evaluate); the plan is round 0
    max_steps: int = navigator.MAX_STEPS
    token_budget: int = 60_000  # prompt + completion, both roles, the whole session
    max_seconds: float = 600.0
    parse_retries: int = 2  # extra navigator attempts after an unparseable reply
    top_k: int = 3
    plan_hints: int = 3  # templates retrieved for the problem and shown in the plan request (as in sampling)
    retrieval_mode: str = "hybrid"
    # SamplingParams is frozen: one shared default instance is safe
    navigator_params: SamplingParams = SamplingParams(temperature=0.0, max_tokens=1024)
    inference_params: SamplingParams = SamplingParams(temperature=0.0, max_tokens=1024)

    def __post_init__(self) -> None:
        for name in ("max_rounds", "max_steps", "token_budget", "top_k"):
            if getattr(self, name) < 1:
                raise InputError("must be at least 1", field=name)
        if self.plan_hints < 0:
            raise InputError("must be 0 or more", field="plan_hints")
        if self.max_seconds <= 0:
            raise InputError("must be positive", field="max_seconds")
        if self.parse_retries < 0:
            raise InputError("must be 0 or more", field="parse_retries")

    def with_overrides(self, **changes: Any) -> SolverConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["navigator_params"] = self.navigator_params.to_dict()
        d["inference_params"] = self.inference_params.to_dict()
        return d
