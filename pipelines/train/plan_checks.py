"""The hardware-dependent checks of a training plan (`validate_plan`): LoRA and DeepSpeed, sequence length,
precision, DeepSpeed's batch numbers against the training config, GPUs and memory; each failure names the
field to change, each pass is recorded in the plan's `checks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kb.errors import InputError
from pipelines.train.memory import available_gpus, deepspeed_version

if TYPE_CHECKING:
    from pipelines.train.launch import LaunchPlan

# Model states (weights, gradients, optimizer) may use at most this share of a GPU; the rest is left for
# activations, buffers and fragmentation, which DeepSpeed's estimate does not cover.
MODEL_STATES_SHARE = 0.9


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
        available = available_gpus()
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
