"""Which backends play navigator and inference for solve, serve and eval: flags, config file, navigator names.

A role is given as a backend spec (`transformers:/path`, `openai:MODEL@URL`, `vllm:/path`,
`scripted`), in `--llm-config FILE` (pipelines.llm.config), or, for the navigator, as the
name of a registered navigator model (`reasonflux navigators list`), which runs on the
transformers backend. Without `--inference` the navigator's model plays both roles, and
the same spec twice yields one shared instance (pipelines.llm.get_backend), so a model is
never loaded twice. `scripted` without rules is the play-along script of serve.scripted,
so the whole path can be tried without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from kb.db import Database
from pipelines.llm.base import Backend, SamplingParams
from pipelines.llm.config import LlmConfig, RoleConfig, load_config
from pipelines.llm.registry import available_backends

_SCRIPTED_SHARED: dict[str, Backend] = {}


@dataclass
class Roles:
    navigator: Backend
    inference: Backend
    navigator_params: SamplingParams | None = None
    inference_params: SamplingParams | None = None
    described: dict[str, Any] = field(default_factory=dict)


def _role(db: Database, cfg: LlmConfig, name: str, flag: str | None) -> RoleConfig:
    """The role from its flag (a spec or a navigator name) or the config file.

    A navigator name keeps the sampling the file gives its role."""
    if not flag or flag.partition(":")[0].strip() in available_backends():
        return cfg.role(name, flag)
    from pipelines.train.registry import resolve_navigator

    with db.session() as s:
        path = resolve_navigator(s, flag)
    base = cfg.roles.get(name)
    sampling = dict(base.sampling) if base is not None and base.backend == "transformers" else {}
    return RoleConfig(backend="transformers", options={"model_path": path, "model": flag}, sampling=sampling)


def _create(role: RoleConfig) -> Backend:
    if role.backend == "scripted" and not ({"rules", "default"} & set(role.options)):
        from serve.scripted import scripted_solver_backend

        key = repr(sorted(role.options.items()))
        if key not in _SCRIPTED_SHARED:
            _SCRIPTED_SHARED[key] = scripted_solver_backend(**role.options)
        return _SCRIPTED_SHARED[key]
    return role.create()


def _params(role: RoleConfig) -> SamplingParams | None:
    return role.sampling_params() if role.sampling else None


def resolve_roles(
    db: Database, *, llm_config: str | None = None, navigator: str | None = None, inference: str | None = None
) -> Roles:
    cfg = load_config(llm_config)
    nav = _role(db, cfg, "navigator", navigator)
    inf = _role(db, cfg, "inference", inference) if inference or "inference" in cfg.roles else nav
    nav_b = _create(nav)
    inf_b = nav_b if inf is nav else _create(inf)
    return Roles(
        navigator=nav_b,
        inference=inf_b,
        navigator_params=_params(nav),
        inference_params=_params(inf),
        described={"navigator": nav.describe(), "inference": inf.describe()},
    )


def backend_options(fn):
    """--llm-config, --navigator, --inference: the same flags on solve, serve and eval."""
    fn = click.option(
        "--inference",
        metavar="SPEC",
        help="Inference LLM (same forms as --navigator; default: the navigator's model).",
    )(fn)
    fn = click.option(
        "--navigator",
        metavar="SPEC|NAME",
        help="Navigator: a registered navigator name, or transformers:PATH, vllm:PATH, "
        "openai:MODEL@URL, scripted.",
    )(fn)
    fn = click.option(
        "--llm-config",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="TOML/YAML file with [roles.navigator] and [roles.inference].",
    )(fn)
    return fn
