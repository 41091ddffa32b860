"""Which backend plays which role (navigator, inference, miner), from a config file or flags.

A role is a backend name plus options. On the command line a role is a spec string:

    scripted                              the scripted test backend
    transformers:/models/tiny             a local model directory
    vllm:/models/qwen2.5-7b-instruct      in-process vLLM on a local model directory
    openai:MODEL@http://host:8000/v1      an OpenAI-compatible server (key: OPENAI_API_KEY if set;
    openai:MODEL                          without @URL: OPENAI_BASE_URL, else http://127.0.0.1:8000/v1)

and `--llm-config FILE` (TOML or YAML) gives roles with any options plus sampling and prompts:

    [roles.navigator]
    backend = "openai"
    model = "Qwen/Qwen2.5-32B-Instruct"
    base_url = "http://gpu-node:8000/v1"
    api_key_env = "OPENAI_API_KEY"      # the NAME of the variable; the key itself never goes in a file
    max_concurrency = 64
    structured_output = true              # or "json_schema" | "json_object" (pipelines.llm.structured)
    [roles.navigator.sampling]
    temperature = 0.7
    max_tokens = 1024
    [prompts]
    dir = "my_prompts"                    # files named <prompt>.txt override the built-in prompts

A flag beats the file. Keys that look like secrets in the file are refused (at any depth: `extra_body.api_key`), and so is every key the
file's level does not know (a misspelt `max_concurency` or `temprature` names itself, the file and the role).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kb.errors import InputError
from kb.secrets import is_secret_name
from pipelines.llm.base import Backend, SamplingParams
from pipelines.llm.registry import available_backends, backend_options, get_backend
from pipelines.llm.structured import structured_mode

_SECRET_KEYS = {"api_key", "apikey", "key", "token", "secret", "password", "authorization"}
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


@dataclass
class RoleConfig:
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)

    def create(self) -> Backend:
        return get_backend(self.backend, **self.options)

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        values = {**self.sampling, **{k: v for k, v in overrides.items() if v is not None}}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return SamplingParams(**values)

    def describe(self) -> dict[str, Any]:
        """What a run records: backend, model and options, no secrets (only variable names)."""
        return {"backend": self.backend, **self.options, "sampling": self.sampling}


@dataclass
class LlmConfig:
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    prompts_dir: Path | None = None

    def role(self, name: str, flag: str | None = None) -> RoleConfig:
        if flag:
            base = self.roles.get(name)
            spec = parse_spec(flag)
            if base is not None and base.backend == spec.backend:
                spec.sampling = {**base.sampling, **spec.sampling}
            return spec
        if name in self.roles:
            return self.roles[name]
        raise InputError(
            f"no LLM configured for the {name} role: pass --{name} SPEC "
            "(e.g. transformers:/path/to/model) or give it in --llm-config"
        )


def parse_spec(spec: str) -> RoleConfig:
    """A role from a flag: 'scripted', 'transformers:PATH', 'vllm:PATH', 'openai:MODEL@BASE_URL'."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in available_backends():
        raise InputError(
            f"unknown LLM backend {name!r} in {spec!r}; available: {', '.join(available_backends())}",
            field="backend",
        )
    options: dict[str, Any] = {}
    if name in ("transformers", "vllm"):
        if not rest:
            raise InputError(f"{spec!r}: the {name} backend needs a model path ({name}:/path/to/model)")
        options["model_path"] = rest
    elif name == "openai":
        model, _, base_url = rest.partition("@")
        if not model:
            raise InputError(f"{spec!r}: the openai backend needs openai:MODEL@BASE_URL")
        options["model"] = model
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if base_url:
            options["base_url"] = base_url
        if os.environ.get("OPENAI_API_KEY"):  # none set: a keyless local server, no Authorization header
            options["api_key_env"] = "OPENAI_API_KEY"
    elif rest:
        options["model"] = rest
    return RoleConfig(backend=name, options=options)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"cannot read LLM config: {e}", file=str(path)) from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        data = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - any parse error is the file's fault
        raise InputError(f"not valid {path.suffix.lstrip('.') or 'YAML'}: {e}", file=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("top level must be a mapping", file=str(path))
    return data


_TOP_KEYS = {"roles", "prompts"}
_PROMPTS_KEYS = {"dir"}
_ROLE_KEYS = {"backend", "sampling"}


def _refuse_unknown(found: Any, known: set[str] | frozenset[str], file: Path, record: str | None) -> None:
    """Unknown keys are errors naming the first one, the file and where; a typo must not be ignored."""
    unknown = sorted(set(found) - set(known))
    if unknown:
        where = f"{record}." if record else ""
        raise InputError(
            f"unknown key {where}{unknown[0]!r} (known here: {', '.join(sorted(known))})",
            file=str(file),
            record=record,
            field=unknown[0],
        )


def _mapping(value: Any, file: Path, record: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError("must be a table/mapping", file=str(file), record=record)
    return value


def load_config(path: str | os.PathLike | None) -> LlmConfig:
    """Read a TOML/YAML LLM config; every key at every level must be known (or it is an InputError)."""
    if path is None:
        return LlmConfig()
    p = Path(path)
    data = _read(p)
    _refuse_unknown(data, _TOP_KEYS, p, None)
    roles = {
        role: _load_role(raw, p, f"roles.{role}")
        for role, raw in _mapping(data.get("roles"), p, "roles").items()
    }
    prompts = _mapping(data.get("prompts"), p, "prompts")
    _refuse_unknown(prompts, _PROMPTS_KEYS, p, "prompts")
    prompts_dir = prompts.get("dir")
    return LlmConfig(roles=roles, prompts_dir=(p.parent / prompts_dir) if prompts_dir else None)


def _load_role(raw: Any, p: Path, record: str) -> RoleConfig:
    if not isinstance(raw, dict) or "backend" not in raw:
        raise InputError("each role needs a `backend`", file=str(p), record=record, field="backend")
    raw = dict(raw)
    secret = sorted(k for k in raw if k.lower() in _SECRET_KEYS) or _nested_secrets(raw)
    if secret:
        raise InputError(
            "secrets never go in a config file: set an environment variable and name it with api_key_env",
            file=str(p),
            record=record,
            field=secret[0],
        )
    sampling = _mapping(raw.pop("sampling", None), p, f"{record}.sampling")
    _refuse_unknown(sampling, _SAMPLING_FIELDS, p, f"{record}.sampling")
    backend = raw.pop("backend")
    if backend not in available_backends():
        raise InputError(
            f"unknown backend {backend!r}; available: {', '.join(available_backends())}",
            file=str(p),
            record=record,
            field="backend",
        )
    known = backend_options(backend)
    if known is not None:
        _refuse_unknown(raw, known | _ROLE_KEYS, p, record)
    if "structured_output" in raw:  # a value the backends cannot read must not pass silently as "off"
        try:
            structured_mode(raw["structured_output"])
        except InputError as e:
            raise InputError(e.reason, file=str(p), record=record, field="structured_output") from None
    return RoleConfig(backend=backend, options=raw, sampling=sampling)


def _nested_secrets(value: Any, path: str = "") -> list[str]:
    """Dotted paths of keys that name a secret (kb.secrets.is_secret_name) at any depth (`extra_body.api_key`)."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            found += [where] if is_secret_name(k) else _nested_secrets(v, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nested_secrets(v, f"{path}[{i}]")
    return found


def backend_for(role: RoleConfig | Backend) -> Backend:
    """The backend of a role: a RoleConfig is created once per process (shared), a Backend used as is."""
    return role.create() if isinstance(role, RoleConfig) else role


def describe_role(role: RoleConfig | Backend) -> dict[str, Any]:
    if isinstance(role, RoleConfig):
        return role.describe()
    return {"backend": role.name, "model": role.model}
