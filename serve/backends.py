"""Which backends play navigator and inference for solve, serve and eval.

Roles are resolved by the one role resolver (`pipelines.llm.roles`): a backend spec, a registered navigator
name, or `--llm-config FILE`. Without `--inference` (and no inference role in the file) the navigator's
model plays both roles, and the same role twice yields one shared instance (pipelines.llm.get_backend), so a
model is never loaded twice. `scripted` is the play-along of pipelines.llm.scripted, so the whole path can
be tried without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from pipelines.llm.base import Backend, SamplingParams
from pipelines.llm.config import load_config

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
    from pipelines.llm.roles import resolve_role  # the database layer: not needed to build the options

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


def backend_options(fn):
    """--llm-config, --navigator, --inference: the same flags on solve, serve and eval."""
    fn = click.option(
        "--inference",
        metavar="SPEC|NAME",
        help="Inference LLM (same forms as --navigator; default: the navigator's model).",
    )(fn)
    fn = click.option(
        "--navigator",
        metavar="SPEC|NAME",
        help="Navigator: a registered navigator or model name, or transformers:PATH, vllm:PATH, "
        "openai:MODEL@URL, scripted.",
    )(fn)
    fn = click.option(
        "--llm-config",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="TOML/YAML file with [roles.navigator] and [roles.inference].",
    )(fn)
    return fn
