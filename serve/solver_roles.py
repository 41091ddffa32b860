"""The solver's two roles: which backends play navigator and inference for solve, serve and eval.

Roles are resolved by the one role resolver (`pipelines.llm.roles`): a backend spec, a registered navigator
name, or `--llm-config FILE`. Without `--inference` (and no inference role in the file) the navigator's
model plays both roles, and the same role twice yields one shared instance (pipelines.llm.get_backend), so a
model is never loaded twice. `scripted` is the play-along of pipelines.llm.scripted, so the whole path can
be tried without a model. The flags that name them are pipelines.llm.cli_options.solver_role_options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.llm.base import Backend, SamplingParams
from pipelines.llm.config import load_config
from pipelines.llm.roles import resolve_role

if TYPE_CHECKING:
    from kb.db import Database


@dataclass
class Roles:
    navigator: Backend
    inference: Backend
    navigator_params: SamplingParams | None = None
    inference_params: SamplingParams | None = None
    described: dict[str, Any] = field(default_factory=dict)


def resolve_roles(
    db: Database,
    *,
    llm_config: str | None = None,
    navigator: str | None = None,
    inference: str | None = None,
    navigator_default: SamplingParams | None = None,
    inference_default: SamplingParams | None = None,
    **overrides: Any,
) -> Roles:
    """Both solver roles; sampling is each role's default < its config < OVERRIDES (e.g. max_tokens)."""

    cfg = load_config(llm_config)
    nav = resolve_role(db, "navigator", navigator, cfg, navigator_default or SamplingParams(), **overrides)
    if inference or "inference" in cfg.roles:
        inf = resolve_role(
            db, "inference", inference, cfg, inference_default or SamplingParams(), **overrides
        )
    else:
        inf = resolve_role(
            db, "navigator", navigator, cfg, inference_default or SamplingParams(), **overrides
        )
    nav_b = nav.create()
    inf_b = inf.create()  # the same config gives the same shared instance
    return Roles(
        navigator=nav_b,
        inference=inf_b,
        navigator_params=nav.sampling,
        inference_params=inf.sampling,
        described={"navigator": nav.config.describe(), "inference": inf.config.describe()},
    )
