"""The one role resolver: which backend plays a role, with which sampling, for every command.

`sample`, `evaluate`, `mine`, `solve`, `serve`, `eval` and `loop` all resolve their roles here, so a role
is written the same way everywhere:

    scripted | transformers:PATH | vllm:PATH | openai:MODEL@URL     a backend spec (pipelines.llm.config)
    NAME                                                            a registered navigator or model
                                                                    (transformers)
    transformers:NAME | vllm:NAME                                   the same on that backend

or given in `--llm-config FILE` under `[roles.<role>]`. A flag beats the file. Sampling parameters are the
command's defaults, then the file's `[roles.<role>.sampling]`, then flags (`--temperature`, `--max-tokens`:
always the completion limit of one call).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.db import Database
from pipelines.llm.base import Backend, SamplingParams
from pipelines.llm.config import LlmConfig, RoleConfig, load_config
from pipelines.llm.registry import available_backends
from pipelines.models.names import resolve

_NAMED_BACKENDS = ("transformers", "vllm")  # backends that load a local checkpoint a navigator name points to


@dataclass
class ResolvedRole:
    config: RoleConfig
    sampling: SamplingParams
    prompts_dir: str | None = None

    def create(self) -> Backend:
        return self.config.create()

    @property
    def name(self) -> str:
        """What trajectories and runs record as the model: a navigator name, else the model or path."""
        o = self.config.options
        return o.get("model") or o.get("model_path") or self.config.backend


def _registered(db: Database | None, backend: str, name: str, base: RoleConfig | None) -> RoleConfig:
    if db is None:
        raise ValueError("resolving a navigator or model name needs the database")
    with db.engine.connect() as conn:
        path = resolve(conn, name)
    # A registered name keeps the sampling and options the file gives its role on the same backend.
    same = base is not None and base.backend == backend
    options = {**(base.options if same else {}), "model_path": path, "model": name}
    return RoleConfig(backend=backend, options=options, sampling=dict(base.sampling) if same else {})


def _is_navigator_name(flag: str) -> tuple[str, str] | None:
    """(backend, name) when FLAG names a registered navigator or model rather than a backend spec."""
    head, sep, rest = flag.partition(":")
    head = head.strip()
    if not sep and head not in available_backends():
        return "transformers", head
    if head in _NAMED_BACKENDS and rest and not Path(rest).expanduser().exists() and "/" not in rest:
        return head, rest.strip()
    return None


def role_config(db: Database | None, config: LlmConfig, role: str, flag: str | None) -> RoleConfig:
    """The role from its flag (a spec or a registered navigator name) or the config file."""
    if flag:
        named = _is_navigator_name(flag)
        if named is not None:
            return _registered(db, *named, config.roles.get(role))
    return config.role(role, flag)


def resolve_role(
    db: Database | None,
    role: str,
    flag: str | None,
    config: str | LlmConfig | None,
    default: SamplingParams = SamplingParams(),
    **overrides: Any,
) -> ResolvedRole:
    """ROLE's backend and sampling (DEFAULT < config file < non-None OVERRIDES) and the prompts dir."""
    cfg = config if isinstance(config, LlmConfig) else load_config(config)
    rc = role_config(db, cfg, role, flag)
    values = {
        **dataclasses.asdict(default),
        **rc.sampling,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    values["stop"] = tuple(values.get("stop") or ())
    return ResolvedRole(rc, SamplingParams(**values), str(cfg.prompts_dir) if cfg.prompts_dir else None)
