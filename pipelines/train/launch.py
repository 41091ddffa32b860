"""Planning a training run: resolve configs, pick the DeepSpeed config by name, estimate memory, validate,
and build the exact `accelerate launch` command. A dry run stops here; a real run hands the plan to
`pipelines.train.run.execute`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb import config as kb_config
from kb.db import Database
from kb.errors import InputError
from pipelines.train.base_config import TrainConfig
from pipelines.train.data import VerifiedDataset, verify_export
from pipelines.train.dpo_config import DPOTrainConfig
from pipelines.train.sft_config import SFTTrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent
DEEPSPEED_DIR = PACKAGE_DIR / "deepspeed"
ACCELERATE_DIR = PACKAGE_DIR / "accelerate"
CONFIGS: dict[str, type[TrainConfig]] = {"sft": SFTTrainConfig, "dpo": DPOTrainConfig}
# Short names for the shipped DeepSpeed configs; any file stem in DEEPSPEED_DIR is accepted too.
DEEPSPEED_ALIASES = {"zero3": "zero3_a100x8_32b", "zero3-offload": "zero3_offload"}
DEFAULT_GPU_DEEPSPEED = "zero3"
# The paper's GPUs (A100-80GB) when planning on a machine without GPUs.
DEFAULT_GPU_MEMORY_GB = 80.0
# Model states (weights, gradients, optimizer) may use at most this share of a GPU; the rest is left for
# activations, buffers and fragmentation, which DeepSpeed's estimate does not cover.
MODEL_STATES_SHARE = 0.9
WORKER_MODULE = "pipelines.train.worker"
# A launched run that prints nothing for this long is stopped (loading a 32B model prints as it goes).
DEFAULT_PROGRESS_TIMEOUT_S = 1800.0
SPEC_FILE = "launch_spec.json"


# -- DeepSpeed configs by name ------------------------------------------------------------------------


def deepspeed_configs() -> dict[str, Path]:
    """Name -> shipped JSON file, aliases included."""
    files = {p.stem: p for p in sorted(DEEPSPEED_DIR.glob("*.json"))}
    return {
        **files,
        **{alias: files[target] for alias, target in DEEPSPEED_ALIASES.items() if target in files},
    }


def resolve_deepspeed(name_or_path: str) -> tuple[str, Path, dict[str, Any]]:
    """(name, path, parsed JSON) for a shipped config name or a JSON file path."""
    shipped = deepspeed_configs()
    if name_or_path in shipped:
        path, name = shipped[name_or_path], name_or_path
    elif name_or_path.endswith(".json") and Path(name_or_path).expanduser().is_file():
        path = Path(name_or_path).expanduser().resolve()
        name = path.stem
    else:
        raise InputError(
            f"unknown DeepSpeed config {name_or_path!r}; shipped: {', '.join(sorted(shipped))} "
            "(or pass a path to a .json file)",
            field="deepspeed",
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}", file=str(path)) from None
    zero = data.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") not in (0, 1, 2, 3):
        raise InputError(
            "needs zero_optimization.stage (0-3)", file=str(path), field="zero_optimization.stage"
        )
    return name, path, data


# -- model size and DeepSpeed's memory estimate ------------------------------------------------------


def count_parameters(model_dir: str) -> dict[str, int]:
    """Total and largest-layer parameter counts from config.json alone (built on the meta device).

    Only config.json is needed, so a dry run can plan a 32B run with a directory holding just that file.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot read the model config: {e}", file=str(Path(model_dir) / "config.json")
        ) from None
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(
        {p.data_ptr() if p.device.type != "meta" else id(p): p.numel() for p in model.parameters()}.values()
    )
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    out = {"total": int(total), "largest_layer": int(largest)}
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int):
        out["max_positions"] = positions
    return out


def deepspeed_version() -> str | None:
    """The installed deepspeed's version if it imports, else None (it is the optional `train` extra)."""
    try:
        from importlib.metadata import version

        # deepspeed's logger writes to the stdout it finds at import; keep it off ours (--json output).
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed  # noqa: F401

        return version("deepspeed")
    except (ImportError, OSError, RuntimeError):  # absent, or present but broken for this torch/CUDA
        return None


def _zero3_states(
    total: int,
    largest: int,
    gpus: int,
    nodes: int,
    offload_opt: bool,
    offload_param: bool,
    zero_init: bool,
    buffer: float = 1.5,
) -> tuple[int, int]:
    """DeepSpeed's closed form for ZeRO-3 model states (bytes per CPU node, per GPU).

    Mixed-precision AdamW needs 18 bytes per parameter (2 fp16 weights + 2 fp16 grads + 4 fp32 grads +
    4 fp32 master weights + 8 fp32 moments), 16 of them offloadable; ZeRO-3 splits them over all GPUs and
    keeps the largest layer (4 bytes/param) gathered. CPU figures carry a 1.5x buffer factor.
    """
    gpus_factor = 1 / nodes
    largest_mem = 4 * largest
    per_node_gpus = gpus // nodes
    if offload_opt and offload_param:
        gpu = largest_mem
        cpu = total * (18 * gpus_factor if zero_init else max(4 * per_node_gpus, 18 * gpus_factor)) * buffer
    elif offload_opt:
        gpu = largest_mem + int(2 * total / gpus)
        cpu = total * (16 * gpus_factor if zero_init else max(4 * per_node_gpus, 16 * gpus_factor)) * buffer
    else:
        gpu = largest_mem + int(18 * total / gpus)
        cpu = (largest if zero_init else total) * 4 * per_node_gpus * buffer
    return int(cpu), int(gpu)


def _zero2_states(
    total: int, gpus: int, nodes: int, offload_opt: bool, buffer: float = 1.5
) -> tuple[int, int]:
    """DeepSpeed's closed form for ZeRO-2: fp16 weights stay whole on every GPU (2 bytes/param); the other
    16 bytes/param are split over the GPUs, or kept on the CPU when the optimizer is offloaded."""
    per_node_gpus = gpus // nodes
    if offload_opt:
        return int(total * max(4 * gpus, 16) * buffer), 2 * total
    return int(total * 4 * per_node_gpus * buffer), 2 * total + int(18 * total / gpus)


def estimate_memory(
    params: dict[str, int], ds_config: dict[str, Any], num_gpus: int, num_nodes: int = 1
) -> dict[str, Any]:
    """DeepSpeed's model-states estimate for this config on these GPUs (GiB), and its full option table.

    Uses deepspeed's own estimators when deepspeed is installed, else the same closed forms above.
    """
    zero = ds_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
    offload_param = (zero.get("offload_param") or {}).get("device", "none") not in ("none", None)
    total, largest = params["total"], params["largest_layer"]
    ds_version = deepspeed_version()
    table = None
    if stage == 3:
        if ds_version:
            from deepspeed.runtime.zero.stage3 import (
                estimate_zero3_model_states_mem_needs,
                estimate_zero3_model_states_mem_needs_all_cold,
            )

            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                total,
                largest,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
                cpu_offload=offload_opt,
                cpu_offload_params=offload_param,
                zero_init=True,
            )
            table = _captured(
                estimate_zero3_model_states_mem_needs_all_cold,
                total_params=total,
                largest_layer_params=largest,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
            )
        else:
            cpu, gpu = _zero3_states(total, largest, num_gpus, num_nodes, offload_opt, offload_param, True)
    elif stage == 2:
        if ds_version:
            from deepspeed.runtime.zero.stage_1_and_2 import (
                estimate_zero2_model_states_mem_needs,
                estimate_zero2_model_states_mem_needs_all_cold,
            )

            cpu, gpu = estimate_zero2_model_states_mem_needs(
                total, num_gpus_per_node=num_gpus // num_nodes, num_nodes=num_nodes, cpu_offload=offload_opt
            )
            table = _captured(
                estimate_zero2_model_states_mem_needs_all_cold,
                total_params=total,
                num_gpus_per_node=num_gpus // num_nodes,
                num_nodes=num_nodes,
            )
        else:
            cpu, gpu = _zero2_states(total, num_gpus, num_nodes, offload_opt)
    else:  # stages 0/1: plain data parallel, every GPU holds all 18 bytes/param (stage 1 splits 12 of them)
        gpu = total * (18 if stage == 0 else 6 + int(12 / num_gpus))
        cpu = 0
    gib = 2**30
    return {
        "zero_stage": stage,
        "offload_optimizer": offload_opt,
        "offload_param": offload_param,
        "num_gpus": num_gpus,
        "num_nodes": num_nodes,
        "total_params": total,
        "largest_layer_params": largest,
        "per_gpu_gib": round(gpu / gib, 2),
        "per_node_cpu_gib": round(cpu / gib, 2),
        "source": f"deepspeed {ds_version}" if ds_version else "built-in copy of DeepSpeed's formula",
        "deepspeed_table": table,
    }


def _captured(fn, **kwargs) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(**kwargs)
    return buf.getvalue().rstrip()


# -- the plan -----------------------------------------------------------------------------------------


@dataclass
class LaunchPlan:
    stage: str
    config: TrainConfig
    dataset: VerifiedDataset
    base_model: str
    num_gpus: int
    launcher: str  # "inprocess" (CPU, this process) | "accelerate" (subprocess via accelerate launch)
    model_params: dict[str, int]
    deepspeed_name: str | None = None
    deepspeed_path: Path | None = None
    deepspeed_config: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    gpu_memory_gb: float | None = None
    resume_run: int | None = None
    resume_checkpoint: str | None = None
    name: str | None = None
    progress_timeout_s: float | None = DEFAULT_PROGRESS_TIMEOUT_S
    checks: list[str] = field(default_factory=list)

    @property
    def use_cpu(self) -> bool:
        """A plain CPU run (DeepSpeed on CPU keeps its own device handling)."""
        return self.num_gpus == 0 and self.deepspeed_path is None

    @property
    def cpu_deepspeed(self) -> bool:
        return self.num_gpus == 0 and self.deepspeed_path is not None

    def env(self) -> dict[str, str]:
        """Environment the launched workers need beyond ours."""
        return {"DS_ACCELERATOR": "cpu"} if self.cpu_deepspeed else {}

    def output_dir(self, run_id: int | str = "<RUN_ID>", stamp: str = "<START_TIME>") -> str:
        """The given directory, else one per run under REASONFLUX_HOME (the start time keeps directories of
        runs from different databases sharing one home apart)."""
        if self.config.output_dir:
            return str(Path(self.config.output_dir).expanduser().resolve())
        return str(kb_config.home_dir() / "checkpoints" / f"{self.stage}-run{run_id}-{stamp}")

    def command(self, spec_path: str | None = None) -> list[str]:
        """The exact `accelerate launch` command that runs this plan."""
        spec = spec_path or str(Path(self.output_dir()) / SPEC_FILE)
        cmd = [_accelerate_bin(), "launch"]
        if self.use_cpu:
            cmd += ["--config_file", str(ACCELERATE_DIR / "cpu.yaml")]
        else:
            cmd += [
                "--config_file",
                str(ACCELERATE_DIR / "deepspeed.yaml"),
                "--num_processes",
                str(max(1, self.num_gpus)),
                "--num_machines",
                "1",
                "--mixed_precision",
                "bf16" if self.config.bf16 else "no",
                "--deepspeed_config_file",
                str(self.deepspeed_path),
            ]
        return cmd + ["--module", WORKER_MODULE, spec]

    def spec(self, run_id: int, output_dir: str) -> dict[str, Any]:
        """What a worker process needs to train (no secrets: the database URL travels in the environment)."""
        return {
            "stage": self.stage,
            "run_id": run_id,
            "base_model": self.base_model,
            "dataset": {
                "id": self.dataset.id,
                "kind": self.dataset.kind,
                "path": str(self.dataset.path),
                "files": self.dataset.files,
                "row_counts": self.dataset.row_counts,
            },
            "config": {**self.config.to_dict(), "output_dir": output_dir},
            "output_dir": output_dir,
            "use_cpu": self.use_cpu,
            "deepspeed": str(self.deepspeed_path) if self.deepspeed_path else None,
            "resume_from_checkpoint": self.resume_checkpoint,
        }

    def run_config(self, output_dir: str | None = None) -> dict[str, Any]:
        """What the training_run row records as its configuration."""
        return {
            "training": {**self.config.to_dict(), "output_dir": output_dir or self.config.output_dir},
            "launch": {
                "num_gpus": self.num_gpus,
                "launcher": self.launcher,
                "deepspeed": self.deepspeed_name,
                "deepspeed_path": str(self.deepspeed_path) if self.deepspeed_path else None,
                "deepspeed_config": self.deepspeed_config,
                "model_params": self.model_params,
            },
        }

    def describe(self) -> dict[str, Any]:
        """Everything a dry run prints."""
        return {
            "stage": self.stage,
            "command": "".join(f"{k}={shlex.quote(v)} " for k, v in self.env().items())
            + shlex.join(self.command()),
            "launcher": self.launcher,
            "output_dir": self.output_dir(),
            "base_model": self.base_model,
            "model_params": self.model_params,
            "dataset": {
                "id": self.dataset.id,
                "kind": self.dataset.kind,
                "path": str(self.dataset.path),
                "verified_files": sorted(self.dataset.files),
            },
            "training_config": self.config.to_dict(),
            "deepspeed": {"name": self.deepspeed_name, "path": str(self.deepspeed_path)}
            if self.deepspeed_path
            else None,
            "deepspeed_config": self.deepspeed_config,
            "memory_estimate": self.memory,
            "gpu_memory_gb": self.gpu_memory_gb,
            "resume": {"run": self.resume_run, "checkpoint": self.resume_checkpoint}
            if self.resume_run
            else None,
            "checks": self.checks,
        }


def _accelerate_bin() -> str:
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.exists() else "accelerate"


def plan(
    db: Database,
    stage: str,
    *,
    dataset: str | None = None,
    base_model: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    deepspeed: str | None = None,
    num_gpus: int | None = None,
    name: str | None = None,
    resume: int | None = None,
    gpu_memory_gb: float | None = None,
    cpu_memory_gb: float | None = None,
    launcher: str = "auto",
    dry_run: bool = False,
    progress_timeout_s: float | None = DEFAULT_PROGRESS_TIMEOUT_S,
) -> LaunchPlan:
    """Resolve and validate everything about a run without starting it; raises InputError naming the field."""
    from pipelines.train import navigators, training_runs

    config_cls = CONFIGS[stage]
    resume_checkpoint = None
    stored: dict[str, Any] = {}
    if resume is not None:
        old, resume_checkpoint = training_runs.resumable(db, resume, stage)
        for flag, given, recorded in (
            ("dataset", dataset, old.dataset_version_id),
            ("base-model", base_model, old.base_model),
        ):
            if given is not None and given != recorded:
                raise InputError(
                    f"run {resume} trained with {flag} {recorded!r}; a resumed run keeps it", field=flag
                )
        dataset, base_model = old.dataset_version_id, old.base_model
        stored = {**(old.config or {}).get("training", {}), "output_dir": old.output_path}
        # Same hardware layout unless told otherwise: a ZeRO checkpoint resumes best under its own config.
        before = (old.config or {}).get("launch", {})
        num_gpus = before.get("num_gpus") if num_gpus is None else num_gpus
        deepspeed = deepspeed or before.get("deepspeed_path")
    if not dataset:
        raise InputError("required (a dataset version id or an export directory)", field="dataset")
    if not base_model:
        raise InputError("required (a local model directory)", field="base-model")

    config = _resolve_config(config_cls, stored, config_file, overrides)
    model_dir = _model_dir(db, base_model)
    params = count_parameters(model_dir)
    verified = verify_export(db, dataset, stage=stage)
    if name:
        navigators.check_navigator_name_free(db, name)
    if resume is None and config.output_dir and training_runs.last_checkpoint(config.output_dir):
        raise InputError(
            f"already holds checkpoints ({Path(training_runs.last_checkpoint(config.output_dir)).name}) "
            "of another run: resume that run with --resume RUN_ID, or choose another directory",
            file=config.output_dir,
            field="output-dir",
        )

    if progress_timeout_s is not None and progress_timeout_s <= 0:
        raise InputError("must be > 0 seconds", field="progress-timeout")
    gpus = _available_gpus() if num_gpus is None else num_gpus
    if gpus < 0:
        raise InputError("must be >= 0", field="num-gpus")
    p = LaunchPlan(
        stage=stage,
        config=config,
        dataset=verified,
        base_model=model_dir,
        num_gpus=gpus,
        launcher="inprocess",
        model_params=params,
        resume_run=resume,
        resume_checkpoint=resume_checkpoint,
        name=name,
        progress_timeout_s=progress_timeout_s,
    )
    if gpus > 0:
        p.deepspeed_name, p.deepspeed_path, p.deepspeed_config = resolve_deepspeed(
            deepspeed or DEFAULT_GPU_DEEPSPEED
        )
        p.gpu_memory_gb = gpu_memory_gb or _detected_gpu_memory_gb() or DEFAULT_GPU_MEMORY_GB
        p.memory = estimate_memory(params, p.deepspeed_config, gpus)
    elif deepspeed is not None:
        # DeepSpeed on CPU (DS_ACCELERATOR=cpu, one process) runs the ZeRO code path without GPUs.
        p.deepspeed_name, p.deepspeed_path, p.deepspeed_config = resolve_deepspeed(deepspeed)
    p.launcher = _pick_launcher(launcher, gpus, p.deepspeed_path is not None)
    validate_plan(p, cpu_memory_gb=cpu_memory_gb, dry_run=dry_run)
    return p


def _resolve_config(
    config_cls: type[TrainConfig],
    stored: dict[str, Any],
    config_file: str | None,
    overrides: dict[str, Any] | None,
) -> TrainConfig:
    """Defaults < the resumed run's stored config < the YAML file < flags."""
    values = dict(stored)
    if config_file:
        values.update(config_cls._read_yaml(Path(config_file)))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_cls.load(None, values)


def _model_dir(db: Database, base_model: str) -> str:
    """A local model directory, or a registered navigator's or model's (`reasonflux models get|add`), so DPO
    can start from the SFT navigator and any stage from a fetched base model."""
    from pipelines.models.names import lookup_db

    path = Path(base_model).expanduser()
    if not path.exists():
        named = lookup_db(db, base_model)
        path = Path(named.path if named else base_model)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(
            "not a local model directory (no config.json) nor a registered navigator or model; "
            "models are never downloaded here: pass a directory (for a dry run, one holding just "
            "config.json is enough) or a name from `reasonflux models get|add`",
            file=str(path),
            field="base-model",
        )
    return str(path.resolve())


def _available_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _detected_gpu_memory_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return (
        min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        / 2**30
    )


def _pick_launcher(launcher: str, gpus: int, deepspeed: bool) -> str:
    if launcher not in ("auto", "inprocess", "accelerate"):
        raise InputError("must be auto, inprocess or accelerate", field="launcher")
    if launcher == "auto":
        return "accelerate" if gpus > 0 or deepspeed else "inprocess"
    if launcher == "inprocess" and (gpus > 1 or deepspeed):
        raise InputError(
            "DeepSpeed and multi-GPU runs are launched by accelerate: use --launcher accelerate",
            field="launcher",
        )
    return launcher


def validate_plan(p: LaunchPlan, *, cpu_memory_gb: float | None, dry_run: bool) -> None:
    """Hardware-dependent checks; each failure names the field to change."""
    cfg = p.config
    if cfg.finetuning_type == "lora" and p.deepspeed_name:
        # The merge after training needs the whole adapter in one process; ZeRO-3 shards it.
        raise InputError(
            "LoRA runs train in one process without DeepSpeed (the adapters are merged into the "
            "saved model); drop --deepspeed or use finetuning_type full",
            record=f"{p.stage} config",
            field="finetuning_type",
        )
    positions = p.model_params.get("max_positions")
    if positions and cfg.max_length > positions:
        raise InputError(
            f"is {cfg.max_length} but the model handles at most {positions} positions",
            record=f"{p.stage} config",
            field="max_length",
        )
    if p.num_gpus == 0:
        if cfg.bf16:
            raise InputError(
                "bf16 mixed precision needs a GPU; for a CPU run pass --no-bf16 "
                "(or `bf16: false` in the config file)",
                record=f"{p.stage} config",
                field="bf16",
            )
        if p.cpu_deepspeed:
            if not deepspeed_version():
                raise InputError(
                    "DeepSpeed on CPU needs the deepspeed package (pip install -e '.[train]'); "
                    "drop --deepspeed for a plain CPU run",
                    field="deepspeed",
                )
            _check_deepspeed_batch(p)
            _check_precision(p)
            p.checks.append(
                "CPU DeepSpeed run: one process, DS_ACCELERATOR=cpu, full precision "
                "(exercises the ZeRO path; no memory estimate for CPU)"
            )
            return
        p.checks.append("CPU run: one process, full precision, no DeepSpeed")
        return
    if not dry_run:
        available = _available_gpus()
        if p.num_gpus > available:
            raise InputError(
                f"asked for {p.num_gpus} GPUs, this machine has {available}; "
                "use --dry-run to plan for other hardware",
                field="num-gpus",
            )
    _check_deepspeed_batch(p)
    _check_precision(p)
    mem = p.memory or {}
    budget = p.gpu_memory_gb * MODEL_STATES_SHARE
    if mem.get("per_gpu_gib", 0) > budget:
        raise InputError(
            f"{p.deepspeed_name} needs {mem['per_gpu_gib']} GiB of model states per GPU for "
            f"{p.model_params['total'] / 1e9:.2f}B parameters on {p.num_gpus} GPU(s), more than "
            f"{MODEL_STATES_SHARE:.0%} of {p.gpu_memory_gb:g} GiB; use more GPUs or a config that offloads to "
            f"the CPU (e.g. --deepspeed zero3_offload)",
            field="deepspeed",
        )
    p.checks.append(
        f"model states {mem.get('per_gpu_gib')} GiB per GPU <= {budget:.1f} GiB "
        f"({MODEL_STATES_SHARE:.0%} of {p.gpu_memory_gb:g} GiB)"
    )
    if cpu_memory_gb is not None:
        if mem.get("per_node_cpu_gib", 0) > cpu_memory_gb:
            raise InputError(
                f"{p.deepspeed_name} needs {mem['per_node_cpu_gib']} GiB of CPU memory for "
                f"offloaded states, more than the {cpu_memory_gb:g} GiB given",
                field="cpu-memory-gb",
            )
        p.checks.append(
            f"offloaded states {mem.get('per_node_cpu_gib')} GiB <= {cpu_memory_gb:g} GiB CPU memory"
        )


def _check_deepspeed_batch(p: LaunchPlan) -> None:
    """Concrete batch numbers in the DeepSpeed JSON must agree with the training config ('auto' always does)."""
    cfg, ds, src = p.config, p.deepspeed_config or {}, str(p.deepspeed_path)
    processes = max(1, p.num_gpus)
    expected = {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes,
    }
    for key, want in expected.items():
        got = ds.get(key, "auto")
        if got != "auto" and got != want:
            raise InputError(
                f"is {got} but the training config gives {want} (per_device_train_batch_size "
                f"{cfg.per_device_train_batch_size} x gradient_accumulation_steps "
                f'{cfg.gradient_accumulation_steps} x {processes} processes); set it to "auto" or change the '
                f"batch flags",
                file=src,
                field=key,
            )
    clip = ds.get("gradient_clipping", "auto")
    if clip != "auto" and float(clip) != cfg.max_grad_norm:
        raise InputError(
            f"is {clip} but max_grad_norm is {cfg.max_grad_norm}", file=src, field="gradient_clipping"
        )
    p.checks.append("DeepSpeed batch sizes agree with the training config")


def _check_precision(p: LaunchPlan) -> None:
    ds, src = p.deepspeed_config or {}, str(p.deepspeed_path)
    bf16 = (ds.get("bf16") or {}).get("enabled", "auto")
    fp16 = (ds.get("fp16") or {}).get("enabled", "auto")
    if bf16 != "auto" and bool(bf16) != p.config.bf16:
        raise InputError(
            f"is {bf16} but the training config has bf16 {p.config.bf16}", file=src, field="bf16.enabled"
        )
    if fp16 is True and p.config.bf16:
        raise InputError("fp16 and bf16 cannot both be on", file=src, field="fp16.enabled")


def write_spec(p: LaunchPlan, run_id: int, output_dir: str) -> Path:
    path = Path(output_dir) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(p.spec(run_id, output_dir), indent=2) + "\n")
    return path


def worker_env(db: Database, p: LaunchPlan) -> dict[str, str]:
    """The environment for launched workers: the same database, reached by URL."""
    return {**os.environ, **p.env(), "DATABASE_URL": db.url}
