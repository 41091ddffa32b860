"""What SFT and DPO configs share: documented fields, YAML + flag overrides, field-level validation.

Configs are plain dataclasses (one field per knob, each with `metadata={"help": ...}`), mapped onto TRL's
`SFTConfig` / `DPOConfig` only at training time, so that the KB stores a small, stable, readable config
rather than TRL's ~200 fields that change between releases.

Precedence, as everywhere in the project: flags beat the YAML file, which beats the defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kb.errors import InputError

C = TypeVar("C", bound="TrainConfig")
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target")


def _parse_text(text: str, base: type) -> Any:
    """A flag or YAML string as the field's type when it spells one ("2e-5", "3", "true", "null")."""
    stripped = text.strip()
    if stripped.lower() in ("null", "none", "~", ""):
        return None
    try:
        if base is float:
            return float(stripped)
        if base is int:
            return int(stripped)
    except ValueError:
        return text
    if base is bool:
        return {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }.get(stripped.lower(), text)
    return text


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Fields common to both stages. The defaults are the paper's setup (full fine-tune of a 32B model on
    8 x A100-80GB); scale them down with a YAML file or flags for small models."""

    finetuning_type: str = field(
        default="full",
        metadata=_help(
            "How the weights are trained: 'full' (all parameters, as in the paper) or 'lora' (low-rank adapters "
            "through peft, merged into the saved model, so the result is a plain model folder like a full run's)."
        ),
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank (finetuning_type lora)."))
    lora_alpha: int = field(
        default=32, metadata=_help("LoRA scaling numerator: the update is scaled by alpha/r.")
    )
    lora_dropout: float = field(
        default=0.0, metadata=_help("Dropout on the LoRA input (finetuning_type lora).")
    )
    lora_target: str = field(
        default="all-linear",
        metadata=_help(
            "Modules that get adapters: 'all-linear' or comma-separated module names (q_proj,v_proj)."
        ),
    )
    learning_rate: float = field(default=2e-5, metadata=_help("Peak learning rate of AdamW."))
    num_train_epochs: float = field(default=3.0, metadata=_help("Passes over the dataset."))
    max_steps: int = field(
        default=-1,
        metadata=_help("Stop after this many optimizer steps (overrides num_train_epochs when > 0)."),
    )
    per_device_train_batch_size: int = field(default=1, metadata=_help("Micro-batch size per GPU/process."))
    gradient_accumulation_steps: int = field(
        default=8,
        metadata=_help(
            "Micro-batches accumulated per optimizer step; global batch = micro-batch x accumulation x GPUs."
        ),
    )
    max_length: int = field(
        default=2048,
        metadata=_help(
            "Cutoff length in tokens (LLaMA-Factory's cutoff_len); longer sequences are truncated."
        ),
    )
    bf16: bool = field(
        default=True,
        metadata=_help("bfloat16 mixed precision (needs a GPU; pass --no-bf16 / bf16: false for CPU runs)."),
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata=_help("Recompute activations in the backward pass to save memory (slower, needed at 32B)."),
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata=_help("Learning-rate schedule (transformers name).")
    )
    warmup_steps: float = field(
        default=0.0,
        metadata=_help("Linear LR warm-up: a number of steps (>= 1) or a share of all steps (in [0, 1))."),
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm."))
    optim: str = field(default="adamw_torch", metadata=_help("Optimizer (transformers name)."))
    logging_steps: int = field(
        default=1, metadata=_help("Log (and record in training_metric) every N optimizer steps.")
    )
    save_steps: int = field(
        default=100, metadata=_help("Write a resumable checkpoint every N optimizer steps.")
    )
    save_total_limit: int | None = field(
        default=2, metadata=_help("Keep at most this many checkpoints (null keeps all).")
    )
    seed: int = field(default=42, metadata=_help("Random seed (data order, initialisation of new heads)."))
    output_dir: str | None = field(
        default=None,
        metadata=_help(
            "Where checkpoints and the final model go (default: $REASONFLUX_HOME/checkpoints/<stage>-run<ID>)."
        ),
    )

    stage: typing.ClassVar[str] = ""

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help_text(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def load(
        cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
    ) -> typing.Self:
        """Defaults, then the YAML file, then `overrides` (flags; None values mean 'not given')."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(cls._read_yaml(Path(yaml_path)))
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = cls._coerce(name, value, source=None)
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> typing.Self:
        """A config from a stored dict (a training_run row, a launch spec), checked like a YAML file."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise InputError(
                f"unknown {cls.stage} config field; known: {', '.join(cls.field_names())}",
                file=source,
                field=unknown[0],
            )
        config = cls(**{k: cls._coerce(k, v, source=source) for k, v in data.items()})
        config.validate()
        return config

    @classmethod
    def _read_yaml(cls, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise InputError("config file not found", file=str(path))
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}", file=str(path)) from None
        if not isinstance(data, dict):
            raise InputError("expected a mapping of config fields at the top level", file=str(path))
        # A file may hold both stages: `sft: {...}` and `dpo: {...}` sections, plus shared top-level fields.
        sections = {k for k in ("sft", "dpo") if isinstance(data.get(k), dict)}
        merged = {k: v for k, v in data.items() if k not in sections}
        merged.update(data.get(cls.stage, {}) if cls.stage in sections else {})
        unknown = sorted(set(merged) - set(cls.field_names()))
        if unknown:
            raise InputError(
                f"unknown {cls.stage} config field; known: {', '.join(cls.field_names())}",
                file=str(path),
                field=unknown[0],
            )
        return {k: cls._coerce(k, v, source=str(path)) for k, v in merged.items()}

    @classmethod
    def _coerce(cls, name: str, value: Any, *, source: str | None) -> Any:
        """The value converted to the field's declared type, or an InputError naming the field."""
        hints = typing.get_type_hints(cls)
        if name not in hints or name not in cls.field_names():
            raise InputError(
                f"unknown {cls.stage} config field; known: {', '.join(cls.field_names())}",
                file=source,
                field=name,
            )
        kind = hints[name]
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        if isinstance(value, str) and base is not str:
            value = _parse_text(value, base)  # flags arrive as text; PyYAML reads "2e-5" as text too
        if value is None:
            if optional:
                return None
            raise InputError("must not be null", file=source, field=name)
        ok = {
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
        }[base](value)
        if not ok:
            raise InputError(f"expected {base.__name__}, got {value!r}", file=source, field=name)
        return float(value) if base is float else value

    # -- checking -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Checks that need no hardware knowledge; plan_checks.validate_plan does the rest."""
        if self.finetuning_type not in ("full", "lora"):
            self._bad("finetuning_type", "must be 'full' (the paper) or 'lora'")
        if self.lora_r < 1 or self.lora_alpha < 1:
            self._bad("lora_r" if self.lora_r < 1 else "lora_alpha", "must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            self._bad("lora_dropout", "must be in [0, 1)")
        if not self.lora_target.strip():
            self._bad("lora_target", "must name modules or be 'all-linear'")
        if not self.learning_rate > 0:
            self._bad("learning_rate", "must be > 0")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            self._bad("num_train_epochs", "must be > 0 unless max_steps is set")
        if self.max_steps == 0 or self.max_steps < -1:
            self._bad("max_steps", "must be a positive number of steps, or -1 to use num_train_epochs")
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_steps",
        ):
            if getattr(self, name) < 1:
                self._bad(name, "must be >= 1")
        if self.max_length < 8:
            self._bad("max_length", "must be >= 8 tokens")
        if self.warmup_steps < 0 or (1 <= self.warmup_steps and self.warmup_steps != int(self.warmup_steps)):
            self._bad("warmup_steps", "must be a whole number of steps or a share in [0, 1)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            self._bad("save_total_limit", "must be >= 1 or null")

    def _bad(self, name: str, message: str) -> None:
        raise InputError(message, record=f"{self.stage} config", field=name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for TRL's config class shared by both stages."""
        d = self.to_dict()
        for name in ("finetuning_type", "output_dir", *LORA_FIELDS):
            d.pop(name)
        # transformers 5 renamed the argument; the old name still works but warns on every run.
        if "activation_checkpointing" in _training_argument_names():
            d["activation_checkpointing"] = d.pop("gradient_checkpointing")
        return d

    def peft_config(self):
        """peft's LoraConfig for a LoRA run, None for a full fine-tune."""
        if self.finetuning_type != "lora":
            return None
        from peft import LoraConfig

        target = self.lora_target.strip()
        modules = target if target == "all-linear" else [m.strip() for m in target.split(",") if m.strip()]
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=modules,
            task_type="CAUSAL_LM",
        )


def _training_argument_names() -> set[str]:
    import transformers  # only where TRL's config is being built, which imports it anyway

    return {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
