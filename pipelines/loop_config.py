"""A loop's configuration (`LoopConfig`: YAML keys, flags, validation, identity) and the names its records use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kb.datasets import check_license
from kb.errors import InputError
from pipelines import navigator as contract
from pipelines.train.dpo_config import DPOTrainConfig

STAGE = "loop"
ITERATION_STAGE = "loop-iteration"
NAVIGATOR_BACKENDS = ("transformers", "vllm")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoopConfig:
    """What a loop does; a YAML file (`--config`) gives any of these keys, flags beat the file."""

    name: str = field(
        default="loop",
        metadata=_help(
            "The loop's id: its runs are found by it, and the navigator iteration k trains is registered as "
            "<name>-it<k>. Running a loop of this name again continues it."
        ),
    )
    iterations: int = field(
        default=2,
        metadata=_help(
            "How many sample -> train rounds to run (a later run may raise it to continue the loop)."
        ),
    )
    problems: str = field(
        default="split=train",
        metadata=_help(
            "The problems sampled every iteration (the selection language of `reasonflux sample --problems`). "
            "DPO pairs only ever come from train-split problems."
        ),
    )
    navigator: str | None = field(
        default=None,
        metadata=_help(
            "The navigator of iteration 0: a role spec (transformers:PATH, vllm:PATH, openai:MODEL@URL, scripted) "
            "or a registered navigator or model name; default roles.navigator of llm_config."
        ),
    )
    base_model: str | None = field(
        default=None,
        metadata=_help(
            "The model iteration 0 trains (a local directory or a registered navigator or model); default the navigator "
            "of iteration 0 when it is a local model or a registered name. Needed when it is served elsewhere "
            "(openai:)."
        ),
    )
    navigator_backend: str = field(
        default="transformers",
        metadata=_help("The backend that runs the navigators the loop trains (transformers or vllm)."),
    )
    inference: str | None = field(
        default=None,
        metadata=_help(
            "The inference role that follows trajectories in evaluation (a role spec or name); default "
            "roles.inference of llm_config."
        ),
    )
    llm_config: str | None = field(
        default=None,
        metadata=_help(
            "TOML or YAML file with roles and sampling (`--llm-config` of the stages); relative to this file."
        ),
    )
    n: int = field(default=8, metadata=_help("Trajectories sampled per problem and iteration."))
    base_seed: int = field(default=0, metadata=_help("Sample i uses seed base_seed + i."))
    hint_k: int = field(default=3, metadata=_help("Retrieved templates shown in the plan prompt (0: none)."))
    retrieval_mode: str = field(
        default="hybrid",
        metadata=_help(
            "How plan steps are linked to template versions (hybrid, vector, text, hierarchical)."
        ),
    )
    max_steps: int = field(default=contract.MAX_STEPS, metadata=_help("Most steps a plan may have."))
    temperature: float | None = field(
        default=None,
        metadata=_help("Navigator sampling temperature (default: the config file's, else sample's 0.7)."),
    )
    top_p: float | None = field(default=None, metadata=_help("Navigator nucleus sampling."))
    max_tokens: int | None = field(default=None, metadata=_help("Completion token limit of one plan."))
    samples: int = field(default=1, metadata=_help("Rollouts per similar problem in evaluation."))
    min_margin: float = field(default=0.2, metadata=_help("Smallest reward difference of a DPO pair."))
    min_rollouts: int = field(default=4, metadata=_help("Rollouts a trajectory needs to be paired."))
    max_pairs_per_problem: int = field(default=4, metadata=_help("DPO pairs kept per problem."))
    train_config: str | None = field(
        default=None,
        metadata=_help("DPO training config YAML (`reasonflux train dpo --config`); relative to this file."),
    )
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "DPO training config fields (e.g. learning_rate, beta, max_steps); they beat train_config."
        ),
    )
    num_gpus: int | None = field(
        default=None, metadata=_help("GPUs for training (default: all visible; 0 trains on the CPU).")
    )
    out_dir: str | None = field(
        default=None,
        metadata=_help(
            "Where the iterations' exports go (default $REASONFLUX_HOME/loops/<name>); relative to this file."
        ),
    )
    license: str | None = field(
        default=None,
        metadata=_help(
            "Licence of the iterations' DPO exports (default: the one their sources agree on, `export --license`)."
        ),
    )
    eval_problems: str | None = field(
        default=None,
        metadata=_help(
            "Held-out problems every iteration's navigator (and the final one) plans for; disjoint from problems."
        ),
    )
    eval_n: int = field(default=8, metadata=_help("Plans sampled per held-out problem."))
    workers: int = field(default=1, metadata=_help("Worker processes of the sampling and evaluation stages."))
    batch_size: int = field(
        default=4, metadata=_help("Units per claim in the sampling and evaluation stages.")
    )

    # Fields that change how the loop is run or measured, not what it trains: a continued loop may change them.
    RUNTIME: typing.ClassVar[tuple[str, ...]] = (
        "iterations",
        "eval_problems",
        "eval_n",
        "workers",
        "batch_size",
        "license",
    )
    PATHS: typing.ClassVar[tuple[str, ...]] = ("llm_config", "train_config", "out_dir")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LoopConfig:
        """Defaults, then the YAML file, then OVERRIDES (None means not given); checked like the file."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(cls._read(Path(path)))
        for key, value in (overrides or {}).items():
            if value is not None and value != {}:
                value = cls._coerce(key, value, source=None)
                # training fields from flags join the file's rather than replace them
                values[key] = {**values.get("train", {}), **value} if key == "train" else value
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def _read(cls, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise InputError(f"cannot read the loop config: {e.strerror}", file=str(path)) from None
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}", file=str(path)) from None
        if not isinstance(data, dict):
            raise InputError("expected a mapping of loop config keys at the top level", file=str(path))
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise InputError(
                    f"unknown loop config key; known: {', '.join(known)}", file=str(path), field=str(key)
                )
        values = {k: cls._coerce(k, v, source=str(path)) for k, v in data.items()}
        for key in cls.PATHS:  # paths in the file are relative to the file
            if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str((path.parent / values[key]).resolve())
        return values

    @classmethod
    def _coerce(cls, key: str, value: Any, *, source: str | None) -> Any:
        hints = typing.get_type_hints(cls)
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise InputError("unknown loop config key", file=source, field=key)
        kind = hints[key]
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        base = typing.get_origin(base) or base
        if value is None:
            if optional:
                return None
            raise InputError("must not be null", file=source, field=key)
        ok = {
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
            dict: lambda v: isinstance(v, dict),
        }[base](value)
        if not ok:
            raise InputError(f"expected {base.__name__}, got {value!r}", file=source, field=key)
        return float(value) if base is float else value

    def validate(self) -> None:
        def bad(key: str, message: str) -> None:
            raise InputError(message, record="loop config", field=key)

        if not self.name or any(c in self.name for c in ";=/ ") or len(self.name) > 80:
            bad("name", "must be a non-empty name of at most 80 characters without ';', '=', '/' or spaces")
        for key in (
            "iterations",
            "n",
            "samples",
            "min_rollouts",
            "max_pairs_per_problem",
            "eval_n",
            "workers",
            "batch_size",
            "max_steps",
        ):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        if self.hint_k < 0:
            bad("hint_k", "must be >= 0")
        if not 0 < self.min_margin <= 1:
            bad("min_margin", "must be in (0, 1]")
        if self.navigator_backend not in NAVIGATOR_BACKENDS:
            bad("navigator_backend", f"must be one of {', '.join(NAVIGATOR_BACKENDS)}")
        if self.retrieval_mode not in ("hybrid", "vector", "text", "hierarchical"):
            bad("retrieval_mode", "must be hybrid, vector, text or hierarchical")
        if self.license is not None:
            check_license(self.license, field="license")

        for key, value in self.train.items():
            DPOTrainConfig._coerce(key, value, source="loop config train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> str:
        """The hash of what the loop trains: a loop continued with other values for these is refused."""
        kept = {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def help_text(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def trained_name(cfg: LoopConfig, k: int) -> str:
    """The navigator iteration K trains (and iteration K + 1 samples with)."""
    return f"{cfg.name}-it{k}"
