"""Planning a training run: resolve configs, pick the DeepSpeed config by name, estimate memory, validate,
and build the exact `accelerate launch` command. A dry run stops here; a real run hands the plan to
`pipelines.train.run.execute`.

DeepSpeed configs, parameter counts and the memory estimate are `pipelines.train.memory`; the hardware
checks `pipelines.train.plan_checks`.
"""

from __future__ import annotations

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
from pipelines.models.names import lookup_db
from pipelines.train import navigators, training_runs
from pipelines.train.base_config import TrainConfig
from pipelines.train.data import VerifiedDataset, verify_export
from pipelines.train.dpo_config import DPOTrainConfig
from pipelines.train.memory import (
    DEFAULT_GPU_DEEPSPEED,
    DEFAULT_GPU_MEMORY_GB,
    available_gpus,
    count_parameters,
    detected_gpu_memory_gb,
    estimate_memory,
    resolve_deepspeed,
)
from pipelines.train.plan_checks import validate_plan
from pipelines.train.sft_config import SFTTrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent
ACCELERATE_DIR = PACKAGE_DIR / "accelerate"
CONFIGS: dict[str, type[TrainConfig]] = {"sft": SFTTrainConfig, "dpo": DPOTrainConfig}
WORKER_MODULE = "pipelines.train.worker"
# A launched run that prints nothing for this long is stopped (loading a 32B model prints as it goes).
DEFAULT_PROGRESS_TIMEOUT_S = 1800.0
SPEC_FILE = "launch_spec.json"


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
    resume_checkpoint = None
    stored: dict[str, Any] = {}
    if resume is not None:
        resume_checkpoint, dataset, base_model, stored, num_gpus, deepspeed = _resumed(
            db, resume, stage, dataset, base_model, num_gpus, deepspeed
        )
    if not dataset:
        raise InputError("required (a dataset version id or an export directory)", field="dataset")
    if not base_model:
        raise InputError("required (a local model directory)", field="base-model")

    config = _resolve_config(CONFIGS[stage], stored, config_file, overrides)
    model_dir = resolve_model_dir(db, base_model)
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
    gpus = available_gpus() if num_gpus is None else num_gpus
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
    _place(p, deepspeed, gpu_memory_gb)
    p.launcher = _pick_launcher(launcher, gpus, p.deepspeed_path is not None)
    validate_plan(p, cpu_memory_gb=cpu_memory_gb, dry_run=dry_run)
    return p


def _resumed(
    db: Database,
    resume: int,
    stage: str,
    dataset: str | None,
    base_model: str | None,
    num_gpus: int | None,
    deepspeed: str | None,
) -> tuple[str, str, str, dict[str, Any], int | None, str | None]:
    """Run RESUME's checkpoint, dataset, base model, stored training config, GPUs and DeepSpeed config: a
    resumed run keeps its data and model (a different one given is refused) and, unless told otherwise,
    its hardware layout."""
    old, checkpoint = training_runs.resumable(db, resume, stage)
    for flag, given, recorded in (
        ("dataset", dataset, old.dataset_version_id),
        ("base-model", base_model, old.base_model),
    ):
        if given is not None and given != recorded:
            raise InputError(
                f"run {resume} trained with {flag} {recorded!r}; a resumed run keeps it", field=flag
            )
    stored = {**(old.config or {}).get("training", {}), "output_dir": old.output_path}
    # Same hardware layout unless told otherwise: a ZeRO checkpoint resumes best under its own config.
    before = (old.config or {}).get("launch", {})
    num_gpus = before.get("num_gpus") if num_gpus is None else num_gpus
    deepspeed = deepspeed or before.get("deepspeed_path")
    return checkpoint, old.dataset_version_id, old.base_model, stored, num_gpus, deepspeed


def _place(p: LaunchPlan, deepspeed: str | None, gpu_memory_gb: float | None) -> None:
    """P's DeepSpeed config (on GPUs the default one unless DEEPSPEED names another), GPU memory and estimate."""
    if p.num_gpus > 0:
        p.deepspeed_name, p.deepspeed_path, p.deepspeed_config = resolve_deepspeed(
            deepspeed or DEFAULT_GPU_DEEPSPEED
        )
        p.gpu_memory_gb = gpu_memory_gb or detected_gpu_memory_gb() or DEFAULT_GPU_MEMORY_GB
        p.memory = estimate_memory(p.model_params, p.deepspeed_config, p.num_gpus)
    elif deepspeed is not None:
        # DeepSpeed on CPU (DS_ACCELERATOR=cpu, one process) runs the ZeRO code path without GPUs.
        p.deepspeed_name, p.deepspeed_path, p.deepspeed_config = resolve_deepspeed(deepspeed)


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


def resolve_model_dir(db: Database, base_model: str) -> str:
    """A local model directory, or a registered navigator's or model's (`reasonflux models get|add`), so DPO
    can start from the SFT navigator and any stage from a fetched base model."""
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


def write_spec(p: LaunchPlan, run_id: int, output_dir: str) -> Path:
    path = Path(output_dir) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(p.spec(run_id, output_dir), indent=2) + "\n")
    return path


def worker_env(db: Database, p: LaunchPlan) -> dict[str, str]:
    """The environment for launched workers: the same database, reached by URL."""
    return {**os.environ, **p.env(), "DATABASE_URL": db.url}
